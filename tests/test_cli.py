"""The command line: one clear line on stderr and a non-zero exit for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.cli import main

POLICY = """\
version: 1
dataset: people
entities:
  subject: {column: subject_id}
columns:
  subject_id: {op: tokenize, domain: subject}
  email: {op: email, domain: email}
  dob: {op: date_shift, entity: subject}
  score: {op: keep}
"""


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "test passphrase")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY)
    table = pa.table(
        {
            "subject_id": ["SUBJ-00000001", "SUBJ-00000002", "SUBJ-00000001"],
            "email": ["ana.lopez@example.org", "b.k@example.com", "ana.lopez@example.org"],
            "dob": pa.array([1000, 2000, 1000], pa.int32()).cast(pa.date32()),
            "score": [0.5, 0.7, 0.9],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    assert main(["keys", "init", "--keyring", "keys.json"]) == 0
    return tmp_path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("biomask: error: ")
    return lines[0][len("biomask: error: ") :]


def mask_args(**over: str) -> list[str]:
    args = {
        "--policy": "policy.yaml",
        "--input": "in.parquet",
        "--output": "out.parquet",
        "--keyring": "keys.json",
    }
    args.update(over)
    return ["mask", *[x for kv in args.items() for x in kv]]


def test_mask_happy_path(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(mask_args()) == 0
    out = capsys.readouterr().out
    assert "masked 3 rows -> 3 out, 0 quarantined" in out
    assert "lineage: out.parquet.lineage" in out
    masked = pq.read_table(work / "out.parquet")
    assert masked.column("subject_id")[0] == masked.column("subject_id")[2]
    assert "SUBJ-00000001" not in masked.column("subject_id").to_pylist()
    assert (work / "out.parquet.lineage" / "manifest.json").exists()


def test_same_run_twice_is_byte_identical(work: Path) -> None:
    assert main(mask_args()) == 0
    assert main(mask_args(**{"--output": "again.parquet"})) == 0
    assert (work / "out.parquet").read_bytes() == (work / "again.parquet").read_bytes()


def test_tokens_agree_across_processes(work: Path) -> None:
    assert main(mask_args()) == 0
    code = (
        "from biomask.cli import main; import sys;"
        "sys.exit(main(['mask','--policy','policy.yaml','--input','in.parquet','--output','p2.parquet','--keyring','keys.json']))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=work, capture_output=True)
    assert pq.read_table(work / "out.parquet").equals(pq.read_table(work / "p2.parquet"))


def test_unknown_operator(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "policy.yaml").write_text(POLICY.replace("op: keep", "op: keepit"))
    assert main(["policy", "validate", "policy.yaml"]) == 1
    assert one_error_line(capsys).startswith(
        "policy.yaml:9: columns.score: unknown operator 'keepit'"
    )


def test_unknown_field(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "policy.yaml").write_text(
        POLICY.replace("domain: email}", "domain: email, keep_domian: true}")
    )
    assert main(mask_args()) == 1
    assert (
        one_error_line(capsys)
        == "policy.yaml:7: columns.email.keep_domian: unknown field 'keep_domian'"
    )


def test_wrong_type_for_operator(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "policy.yaml").write_text(
        POLICY.replace("score: {op: keep}", "score: {op: date_shift, entity: subject}")
    )
    assert main(mask_args()) == 1
    assert one_error_line(capsys) == (
        "policy.yaml:9: columns.score: date_shift takes date, timestamp or date-string columns, "
        "not double (column 'score' is double)"
    )
    assert not (work / "out.parquet").exists()


def test_unlisted_column(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "policy.yaml").write_text(POLICY.replace("  score: {op: keep}\n", ""))
    assert main(mask_args()) == 1
    assert one_error_line(capsys) == (
        "column 'score' of table 'people' is not in policy.yaml: add a rule for it, "
        "or set 'unlisted: drop' or 'unlisted: keep' explicitly"
    )
    assert not (work / "out.parquet").exists()


def test_missing_keyring(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(mask_args(**{"--keyring": "nope.json"})) == 3
    assert one_error_line(capsys) == (
        "keyring nope.json not found; create one with 'biomask keys init --keyring nope.json'"
    )


def test_wrong_passphrase(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "not it")
    assert main(mask_args()) == 3
    assert one_error_line(capsys) == "wrong passphrase for keyring keys.json"


def test_no_passphrase(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BIOMASK_PASSPHRASE")
    assert main(mask_args()) == 3
    assert "set the passphrase in the BIOMASK_PASSPHRASE environment variable" in one_error_line(
        capsys
    )


def test_unreadable_input(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    assert main(mask_args(**{"--input": "broken.parquet"})) == 1
    msg = one_error_line(capsys)
    assert "broken.parquet" in msg and "Parquet" in msg
    assert main(mask_args(**{"--input": "missing.parquet"})) == 1
    assert "missing.parquet" in one_error_line(capsys)


def test_unknown_uri_scheme(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(mask_args(**{"--input": "ftp://host/data.bin"})) == 1
    assert one_error_line(capsys).startswith("unsupported URI 'ftp://host/data.bin'")


def test_output_exists(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "out.parquet").write_text("keep me")
    assert main(mask_args()) == 1
    assert one_error_line(capsys) == "output out.parquet exists; pass --overwrite to replace it"
    assert (work / "out.parquet").read_text() == "keep me"
    assert main([*mask_args(), "--overwrite"]) == 0
    assert pq.read_table(work / "out.parquet").num_rows == 3


def test_usage_error_is_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mask", "--policy", "policy.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomask: error: ") and len(err.strip().splitlines()) == 1


def test_policy_schema_and_keys_commands(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    assert '"title": "biomask policy"' in capsys.readouterr().out
    assert main(["keys", "rotate", "--keyring", "keys.json"]) == 0
    assert "new primary key" in capsys.readouterr().out
    assert main(["keys", "export-public", "--keyring", "keys.json"]) == 0
    assert "BEGIN PUBLIC KEY" in capsys.readouterr().out


def test_demo_mask_unmask_roundtrip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mask -> unmask on the demo data gives back the reversible columns exactly."""
    from biomask.demo import generate
    from biomask.demo.run import demo_policy_text

    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    data = generate(150, seed=5, with_notes=False, with_templates=False)
    Path("in").mkdir()
    pq.write_table(data.subjects, "in/subjects.parquet")
    pq.write_table(data.captures, "in/captures.parquet")
    text = demo_policy_text()
    for col in ("operator_notes", "template"):  # not generated here
        text = (
            "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith(f"{col}:")) + "\n"
        )
    Path("policy.yaml").write_text(text)
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    assert (
        main(
            [
                "mask",
                "--policy",
                "policy.yaml",
                "--input",
                "in",
                "--output",
                "out",
                "--keyring",
                "k.json",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "unmask",
                "--policy",
                "policy.yaml",
                "--input",
                "out",
                "--output",
                "back",
                "--keyring",
                "k.json",
            ]
        )
        == 0
    )
    masked = pq.read_table("out/subjects.parquet")
    back = pq.read_table("back/subjects.parquet")
    assert masked["passport_number"] != data.subjects["passport_number"]
    assert back["passport_number"].to_pylist() == data.subjects["passport_number"].to_pylist()
    assert back["full_name"].to_pylist() == masked["full_name"].to_pylist()  # irreversible stays
    audit = [json.loads(x) for x in Path("back.lineage/audit.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "access" for e in audit)
    assert main(["keys", "export-public", "--keyring", "k.json", "--out", "k.pem"]) == 0
    assert main(["audit", "verify", "back.lineage", "--public-key", "k.pem"]) == 0
    capsys.readouterr()
    # another keyring is refused, saying nothing but the public ids
    assert main(["keys", "init", "--keyring", "other.json"]) == 0
    capsys.readouterr()
    rc = main(
        [
            "unmask",
            "--policy",
            "policy.yaml",
            "--input",
            "out",
            "--output",
            "x",
            "--keyring",
            "other.json",
        ]
    )
    assert rc == 3
    assert "is not the one that masked the data" in one_error_line(capsys)
    assert not Path("x").exists()


def test_csv_integer_ids_mask_and_unmask(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CSV ids read as int64 are tokenized as int64 and come back exactly with unmask."""
    Path("ids.csv").write_text(
        "member_id,visit\n" + "".join(f"{i},{i % 7}\n" for i in range(1, 301))
    )
    Path("ids.yaml").write_text(
        "version: 1\ndataset: members\ncolumns:\n"
        "  member_id: {op: tokenize, domain: member, reversible: true}\n  visit: {op: keep}\n"
    )
    common = ["--policy", "ids.yaml", "--keyring", "keys.json"]
    # unmask reads the key id from the Parquet metadata (CSV has nowhere to carry it)
    assert main(["mask", *common, "--input", "ids.csv", "--output", "m.parquet"]) == 0
    assert main(["unmask", *common, "--input", "m.parquet", "--output", "b.csv"]) == 0
    capsys.readouterr()
    import pyarrow.csv as pacsv

    masked, back = pq.read_table("m.parquet"), pacsv.read_csv("b.csv")
    assert masked.schema.field("member_id").type == pa.int64()
    assert len(set(masked["member_id"].to_pylist()) & set(range(1, 301))) < 3
    assert back["member_id"].to_pylist() == list(range(1, 301))


# -- audit verify: fail closed, a table of checks, receipts -----------------------------------


def _pem(work: Path) -> str:
    assert main(["keys", "export-public", "--keyring", "keys.json", "--out", "signer.pem"]) == 0
    return "signer.pem"


def test_verify_needs_a_trusted_key(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(mask_args()) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "out.parquet.lineage"]) == 1
    assert one_error_line(capsys) == (
        "no trusted public key: pass --public-key PEM (the signer's key, obtained out of "
        "band) or --trust-embedded-key (integrity only, not origin)"
    )
    assert main(["audit", "verify", "out.parquet.lineage", "--trust-embedded-key"]) == 0
    out = capsys.readouterr().out
    assert "integrity only, not origin" in out
    assert out.rstrip().endswith("out.parquet.lineage: integrity verified (origin unproven)")


def test_verify_prints_a_table_of_checks_and_a_receipt(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*mask_args(), "--receipts", "receipts.txt"]) == 0
    printed = capsys.readouterr().out
    (receipt,) = Path("receipts.txt").read_text().splitlines()
    assert f"  receipt: {receipt}" in printed and receipt.startswith("biomask-receipt:v1:2:")
    assert (Path("receipts.txt").stat().st_mode & 0o777) == 0o600
    pem = _pem(work)
    capsys.readouterr()
    args = ["audit", "verify", "out.parquet.lineage", "--public-key", pem]
    assert main([*args, "--receipt", "receipts.txt", "--keyring", "keys.json"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and "ok  " not in out
    rows = [ln for ln in out.splitlines() if ln.startswith("│")]
    names = [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip()]
    assert names == [
        "manifest.json",
        "signing key",
        "manifest.sig",
        "audit.jsonl",
        "lineage files",
        "data files",
        "receipt",
        "last run",
    ]
    assert all(r.rstrip().endswith("ok │") for r in rows if r.split("│")[1].strip())
    assert "links and MACs" in out
    assert out.rstrip().endswith("out.parquet.lineage: verified")


def test_verify_with_a_foreign_key_or_a_later_receipt_fails(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*mask_args(), "--lineage", "L"]) == 0
    import shutil

    shutil.copytree("L", "L.before")
    assert main([*mask_args(**{"--output": "two.parquet"}), "--lineage", "L"]) == 0
    later = capsys.readouterr().out.split("  receipt: ")[-1].strip()
    pem = _pem(work)
    shutil.rmtree("L")
    shutil.copytree("L.before", "L")  # rolled back
    capsys.readouterr()
    assert main(["audit", "verify", "L", "--public-key", pem, "--receipt", later]) == 1
    assert one_error_line(capsys) == (
        "the directory is older than the receipt: 2 audit entries, the receipt saw 4 (it "
        "was rolled back to an earlier copy)"
    )
    assert main(["keys", "init", "--keyring", "other.json"]) == 0
    assert main(["keys", "export-public", "--keyring", "other.json", "--out", "o.pem"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "L", "--public-key", "o.pem"]) == 1
    assert one_error_line(capsys).startswith("the manifest names signing key ")
    # and the next run, told the receipt, refuses the rolled-back directory
    assert main([*mask_args(**{"--output": "three.parquet"}), "--lineage", "L",
                 "--receipt", later]) == 1  # fmt: skip
    assert "older than the receipt" in one_error_line(capsys)
    assert not Path("three.parquet").exists()


def test_a_run_over_the_default_quarantine_limit_fails_and_writes_nothing(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        json.dumps(
            {
                "subject_id": f"S{i:06d}",
                "email": f"p{i}@x.org",
                "dob": "31.02.1990" if i == 0 else "1990-01-12",
                "score": 1,
            }
        )
        for i in range(50)
    ]
    Path("in.jsonl").write_text("\n".join(rows) + "\n")
    (work / "policy.yaml").write_text(
        POLICY.replace("entity: subject}", 'entity: subject, format: "%Y-%m-%d"}')
    )
    assert main(mask_args(**{"--input": "in.jsonl"})) == 1
    assert one_error_line(capsys) == (
        "1 of 50 rows quarantined, more than --max-quarantine (1% of the rows); nothing was "
        "written (the reasons are in the run's lineage; raise the limit only after reading "
        "them)"
    )
    assert not Path("out.parquet").exists() and not list(work.glob("out.quarantine*"))
    assert main(mask_args(**{"--input": "in.jsonl", "--max-quarantine": "2%"})) == 0
    assert Path("out.parquet").exists() and Path("out.quarantine.parquet").exists()
    capsys.readouterr()
    assert main(mask_args(**{"--input": "in.jsonl", "--max-quarantine": "half"})) == 1
    assert one_error_line(capsys).startswith("--max-quarantine 'half': give a row count")


def test_rotate_refuses_a_tampered_lineage_before_rotating(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "rotate", "--keyring", "keys.json", "--receipts", "r.txt"]) == 0
    assert "  receipt: biomask-receipt:v1:1:" in capsys.readouterr().out
    log = Path("keys.json.lineage/audit.jsonl")
    log.write_bytes(log.read_bytes().replace(b'"key.rotate"', b'"key.rotat3"'))
    keyring_before = Path("keys.json").read_bytes()
    assert main(["keys", "rotate", "--keyring", "keys.json"]) == 1
    assert one_error_line(capsys).startswith(
        "refusing to extend lineage keys.json.lineage: audit.jsonl line 1: its MAC does not match"
    )
    assert Path("keys.json").read_bytes() == keyring_before  # no key was added


def test_stdout_and_database_runs_need_a_lineage_dir(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in work.iterdir())
    assert main(mask_args(**{"--output": "-"})) == 1
    assert one_error_line(capsys) == (
        "a run that writes to standard output needs --lineage DIR: its signed record "
        "cannot go beside a pipe (e.g. --lineage people.lineage)"
    )
    assert main(mask_args(**{"--output": "postgresql://u:secret@db:5432/x?table=t"})) == 1
    msg = one_error_line(capsys)
    assert "needs --lineage DIR" in msg and "secret" not in msg and "a database table" in msg
    assert sorted(p.name for p in work.iterdir()) == before  # refused before writing


def test_stdout_quarantine_goes_beside_the_lineage(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "people.csv").write_text(
        "subject_id,dob\nSUBJ-00000001,1980-10-09\nSUBJ-00000002,not a date\n"
    )
    (work / "p.yaml").write_text(
        "version: 1\ndataset: people\nentities:\n  subject: {column: subject_id}\ncolumns:\n"
        "  subject_id: {op: tokenize, domain: subject}\n"
        '  dob: {op: date_shift, entity: subject, format: "%Y-%m-%d"}\n'
    )
    args = mask_args(**{"--policy": "p.yaml", "--input": "people.csv", "--output": "-"})
    assert main([*args, "--lineage", "runs/people.lineage", "--max-quarantine", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1  # the one good row, as JSON Lines
    assert "quarantine: runs/people.quarantine.jsonl" in captured.err
    (row,) = [
        json.loads(x) for x in (work / "runs/people.quarantine.jsonl").read_text().split("\n") if x
    ]
    assert row["_biomask_reason"].startswith("dob")
    assert not (work / "stdout.quarantine.jsonl").exists()


def test_multi_table_policy_refuses_a_single_file_output(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "multi.yaml").write_text(
        "version: 1\ndataset: d\ntables:\n  a: {columns: {x: {op: keep}}}\n"
        "  b: {columns: {x: {op: keep}}}\n"
    )
    args = mask_args(**{"--policy": "multi.yaml", "--input": ".", "--output": "masked.parquet"})
    assert main(args) == 1
    assert one_error_line(capsys) == (
        "the policy names 2 tables (a, b): --output must be a directory (one file per table) "
        "or a postgresql:// URI, not masked.parquet (a .parquet file)"
    )
    assert not (work / "masked.parquet").exists()
    assert not (work / "masked.parquet.lineage").exists()


def test_summary_says_which_output_directory_was_created(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(mask_args(**{"--output": "new/deeper/out.parquet"})) == 0
    assert "  created directory: new (it did not exist)\n" in capsys.readouterr().out
    assert main(mask_args(**{"--output": "new/deeper/again.parquet"})) == 0
    assert "created directory" not in capsys.readouterr().out


def test_progress_is_one_bar_per_table_with_a_total(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal: a bar per table, the previous one closed when the next starts."""
    from biomask import cli

    monkeypatch.delenv("BIOMASK_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bars = cli._progress()
    with bars as update:
        assert update is not None
        update("subjects", 0, 100)
        update("subjects", 100, 100)
        update("captures", 0, None)
        update("captures", 40, None)
        tasks = {t.description: t for t in bars._bar.tasks}
        assert tasks["subjects"].finished and tasks["subjects"].percentage == 100
        assert tasks["captures"].total is None and tasks["captures"].fields["rows"] == "40 rows"
        update("captures", 50, None)
        assert bars._current == "captures"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with cli._progress() as quiet:  # a pipe: no bar at all
        assert quiet is None


def test_rotate_changes_no_token_and_rotate_tokens_says_it_does(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(mask_args()) == 0
    before = pq.read_table(work / "out.parquet")
    assert main(["keys", "rotate", "--keyring", "keys.json"]) == 0
    assert "outputs keep joining earlier ones" in capsys.readouterr().out
    assert main(["keys", "rotate", "--keyring", "keys.json"]) == 0
    assert main(mask_args(**{"--output": "after.parquet"})) == 0
    after = pq.read_table(work / "after.parquet")
    for col in ("subject_id", "email", "dob"):  # tokens and date offsets, byte for byte
        assert after.column(col).equals(before.column(col)), col
    capsys.readouterr()
    assert main(["keys", "rotate-tokens", "--keyring", "keys.json"]) == 0
    out = capsys.readouterr().out
    assert "will NOT join outputs masked earlier" in out
    assert main(mask_args(**{"--output": "moved.parquet"})) == 0
    moved = pq.read_table(work / "moved.parquet")
    assert not set(moved.column("subject_id").to_pylist()) & set(
        before.column("subject_id").to_pylist()
    )


def test_reversible_tokens_survive_rotation_and_unmask(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "rev.yaml").write_text(
        POLICY.replace(
            "{op: tokenize, domain: subject}", "{op: tokenize, domain: subject, reversible: true}"
        )
    )
    assert main(mask_args(**{"--policy": "rev.yaml"})) == 0
    assert main(["keys", "rotate", "--keyring", "keys.json"]) == 0
    assert main(mask_args(**{"--policy": "rev.yaml", "--output": "r2.parquet"})) == 0
    a, b = pq.read_table(work / "out.parquet"), pq.read_table(work / "r2.parquet")
    assert a.column("subject_id").equals(b.column("subject_id"))
    args = ["unmask", "--policy", "rev.yaml", "--input", "r2.parquet", "--output", "u.parquet"]
    assert main([*args, "--keyring", "keys.json"]) == 0
    back = pq.read_table(work / "u.parquet").column("subject_id").to_pylist()
    assert back == ["SUBJ-00000001", "SUBJ-00000002", "SUBJ-00000001"]


def test_erase_without_a_key_store_is_one_clear_error(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["erase", "--keyring", "keys.json", "--subject", "SUBJ-12345678"]) != 0
    store = (work / "keys.json.keystore.sqlite").resolve()
    assert one_error_line(capsys) == (
        f"key store {store} not found: templates cannot be decrypted or erased without the "
        "store they were masked with (pass --keystore, or restore the file)"
    )
    assert not store.exists()


def test_summary_says_what_templates_are_bound_to(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "t.yaml").write_text(POLICY + "  tpl: {op: encrypt, entity: subject}\n")
    table = pq.read_table(work / "in.parquet")
    pq.write_table(table.append_column("tpl", pa.array([b"a" * 8] * 3)), work / "t.parquet")
    assert main(mask_args(**{"--policy": "t.yaml", "--input": "t.parquet"})) == 0
    out = capsys.readouterr().out
    assert (
        "templates people.tpl: bound to dataset, table, column, entity 'subject'; no row_key: "
        "two templates of one subject can be swapped between their rows"
    ) in out
    dossier = json.loads((work / "out.parquet.lineage" / "dossier.json").read_text())
    assert "no row_key" in json.dumps(dossier)


def _mask_version_1_templates(work: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Mask three templates (two subjects, a row key) with the version 1 writer into
    out.parquet under t.yaml; returns the templates in clear."""
    import biomask.keys.envelope as env
    import biomask.masking.operators.encrypt as enc

    (work / "t.yaml").write_text(
        POLICY
        + "  cap: {op: tokenize, domain: capture}\n"
        + "  tpl: {op: encrypt, entity: subject, per_entity_key: true, row_key: cap}\n"
    )
    table = pq.read_table(work / "in.parquet")
    table = table.append_column("cap", pa.array(["CAP-000001", "CAP-000002", "CAP-000003"]))
    templates = [b"t1" * 8, b"t2" * 8, b"t3" * 8]
    pq.write_table(table.append_column("tpl", pa.array(templates)), work / "t.parquet")
    with monkeypatch.context() as m:  # the version 1 writer
        m.setattr(env, "MAGIC", env.MAGIC_V1)
        m.setattr(enc.Encrypt, "_aad_prefix_v2", enc.Encrypt._aad_prefix)
        m.setattr(env, "mids_v2", lambda tok, rk, rows: env.row_tokens(tok, rows))
        m.setattr(env, "lp", lambda h: b"|" + h)
        assert main(mask_args(**{"--policy": "t.yaml", "--input": "t.parquet"})) == 0
    return templates


def test_rekey_upgrade_rewrites_version_1_templates_bound_to_their_row(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = _mask_version_1_templates(work, monkeypatch)
    old = pq.read_table(work / "out.parquet")
    assert {bytes(v)[:4] for v in old.column("tpl").to_pylist()} == {b"BMT\x01"}
    args = ["rekey", "--keyring", "keys.json", "--upgrade", "--policy", "t.yaml"]
    assert main([*args, "--input", "out.parquet", "--output", "v2.parquet"]) == 0
    assert "re-encrypted 3 rows -> 3 out" in capsys.readouterr().out
    new = pq.read_table(work / "v2.parquet")
    assert {bytes(v)[:4] for v in new.column("tpl").to_pylist()} == {b"BMT\x02"}
    for col in ("subject_id", "email", "cap"):
        assert new.column(col).equals(old.column(col))
    un = ["unmask", "--policy", "t.yaml", "--keyring", "keys.json"]
    assert main([*un, "--input", "v2.parquet", "--output", "u.parquet"]) == 0
    assert pq.read_table(work / "u.parquet").column("tpl").to_pylist() == templates


def test_rekey_upgrade_after_rotate_tokens_keeps_each_subject_on_its_one_key(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1 templates masked before ``keys rotate-tokens`` and upgraded after it: the
    file's tokens are under the old token key (the pinned entity key), and the upgrade
    keeps every subject on the key its templates always had, so they decrypt, and one
    erase (by the subject's new token) makes them unreadable while the others stay."""
    templates = _mask_version_1_templates(work, monkeypatch)
    assert main(["keys", "rotate-tokens", "--keyring", "keys.json"]) == 0
    up = ["rekey", "--keyring", "keys.json", "--upgrade", "--policy", "t.yaml"]
    assert main([*up, "--input", "out.parquet", "--output", "v2.parquet"]) == 0
    v2 = pq.read_table(work / "v2.parquet")
    assert {bytes(v)[:4] for v in v2.column("tpl").to_pylist()} == {b"BMT\x02"}
    un = ["unmask", "--policy", "t.yaml", "--keyring", "keys.json"]
    assert main([*un, "--input", "v2.parquet", "--output", "u.parquet"]) == 0
    assert pq.read_table(work / "u.parquet").column("tpl").to_pylist() == templates
    # the subject's token in outputs masked from now on names the same one key
    moved = mask_args(**{"--policy": "t.yaml", "--input": "t.parquet", "--output": "m.parquet"})
    assert main(moved) == 0
    new = pq.read_table(work / "m.parquet").column("subject_id")[0].as_py()
    erase = ["erase", "--keyring", "keys.json", "--policy", "t.yaml", "--subject", new]
    assert main(erase) == 0
    assert f"erased the template key of subject {new}" in capsys.readouterr().out
    after = [*un, "--input", "v2.parquet", "--output", "u2.parquet", "--max-quarantine", "3"]
    assert main(after) == 0
    # rows of the erased subject (SUBJ-00000001: rows 0 and 2) are unreadable, row 1 is not
    readable = pq.read_table(work / "u2.parquet").column("tpl").to_pylist()
    assert readable == [templates[1]]


def test_a_column_of_too_small_shapes_is_one_line_and_nothing_written(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq.write_table(pa.table({"sid": ["A-1", "A-2", "A-3"]}), work / "small.parquet")
    (work / "small.yaml").write_text(
        "version: 1\ndataset: d\ncolumns:\n  sid: {op: tokenize, domain: s}\n"
    )
    assert main(mask_args(**{"--policy": "small.yaml", "--input": "small.parquet"})) != 0
    assert one_error_line(capsys) == (
        "small.yaml:4: columns.sid: tokenize on column 'sid' of table 'd': every value's shape "
        "has fewer than 10^6 possible values, too few for tokens that never merge two values "
        "(NIST SP 800-38G's minimum for FF1): use longer ids, hash (length >= 32) or generalize"
    )
    assert not (work / "out.parquet").exists()


def test_erase_while_the_key_store_is_busy_is_one_line_and_erases_nothing(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    (work / "t.yaml").write_text(
        POLICY + "  tpl: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    table = pq.read_table(work / "in.parquet")
    pq.write_table(table.append_column("tpl", pa.array([b"a" * 8] * 3)), work / "t.parquet")
    assert main(mask_args(**{"--policy": "t.yaml", "--input": "t.parquet"})) == 0
    token = pq.read_table(work / "out.parquet").column("subject_id")[0].as_py()
    store = (work / "keys.json.keystore.sqlite").resolve()
    writer = sqlite3.connect(str(store))
    writer.execute("INSERT INTO biomask_erased (dek_id) VALUES ('e:x:unrelated')")
    writer.commit()  # a page in the WAL that the reader below pins
    reader = sqlite3.connect(str(store))
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM biomask_keys").fetchone()
    capsys.readouterr()
    try:
        assert main(["erase", "--keyring", "keys.json", "--subject", token]) != 0
        assert one_error_line(capsys) == (
            f"key store {store} is busy (another process has it open, e.g. a running mask, "
            "unmask or training feed): nothing was erased; stop it and run erase again"
        )
        keys = {d for (d,) in writer.execute("SELECT dek_id FROM biomask_keys")}
        assert f"e:subject:{token}" in keys
    finally:
        reader.rollback()
        reader.close()
        writer.close()
    assert main(["erase", "--keyring", "keys.json", "--subject", token]) == 0


def test_python_dash_m_biomask_is_the_command() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "biomask", "policy", "schema"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["type"] == "object"


def test_an_unknown_engine_is_one_clear_error() -> None:
    from biomask.errors import BiomaskError
    from biomask.integrations import executor

    with pytest.raises(BiomaskError, match="unknown engine 'flink': use local, ray, spark"):
        executor("flink")


def test_erase_after_rotate_tokens_reaches_the_one_key_by_new_token_old_token_or_id(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "t.yaml").write_text(
        POLICY + "  tpl: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    table = pq.read_table(work / "in.parquet")
    pq.write_table(table.append_column("tpl", pa.array([b"a" * 8] * 3)), work / "t.parquet")
    assert main(mask_args(**{"--policy": "t.yaml", "--input": "t.parquet"})) == 0
    first_key = json.loads((work / "keys.json").read_text())["token_key"]
    assert main(["keys", "rotate-tokens", "--keyring", "keys.json"]) == 0
    moved = mask_args(**{"--policy": "t.yaml", "--input": "t.parquet", "--output": "m.parquet"})
    assert main(moved) == 0
    old = pq.read_table(work / "out.parquet").column("subject_id")[0].as_py()
    new = pq.read_table(work / "m.parquet").column("subject_id")[0].as_py()
    assert old != new
    capsys.readouterr()
    assert main(["erase", "--keyring", "keys.json", "--subject", new]) != 0
    assert one_error_line(capsys).startswith(
        f"token key {json.loads((work / 'keys.json').read_text())['token_key']} is not the "
        f"entity key {first_key} that names subject keys (the token keys were rotated): pass "
        "--policy"
    )
    erase = ["erase", "--keyring", "keys.json", "--policy", "t.yaml"]
    assert main([*erase, "--subject", new]) == 0
    assert f"erased the template key of subject {new}" in capsys.readouterr().out
    assert main([*erase, "--subject", old, "--token-key", first_key]) == 0
    assert "already erased" in capsys.readouterr().out
    assert main([*erase, "--subject-id", "SUBJ-00000002"]) == 0
    out = capsys.readouterr().out
    assert "erased the template key" in out and "SUBJ-00000002" not in out
    assert main([*erase, "--subject-id", "SUBJ-00000002"]) == 0
    assert "already erased" in capsys.readouterr().out
