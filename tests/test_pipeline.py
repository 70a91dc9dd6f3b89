"""End to end through the pipeline: nothing lost, nothing leaked, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from biomask.demo import generate
from biomask.demo.run import demo_policy_text
from biomask.errors import BiomaskError, PolicyError, QuarantineLimitError
from biomask.keys import Keyring
from biomask.lineage import verify
from biomask.pipeline import QuarantineLimit, run_mask
from biomask.policies import load_policy, parse_policy
from tests.lineage.conftest import run_manifest, tree_bytes

POLICY = """\
version: 1
dataset: people
entities:
  subject: {column: subject_id}
columns:
  subject_id: {op: tokenize, domain: subject}
  email: {op: email, domain: email}
  dob: {op: date_shift, entity: subject, format: "%Y-%m-%d"}
"""


def people_csv(path: Path, rows: int, bad_every: int = 0) -> None:
    dob = [
        "not a date"
        if bad_every and i % bad_every == 0
        else f"19{50 + i % 50}-0{1 + i % 9}-1{i % 9}"
        for i in range(rows)
    ]
    pacsv.write_csv(
        pa.table(
            {
                "subject_id": [f"SUBJ-{i:08d}" for i in range(rows)],
                "email": [f"person.{i}@example.org" for i in range(rows)],
                "dob": dob,
            }
        ),
        path,
    )


def test_rows_are_conserved_and_counted(tmp_path: Path) -> None:
    people_csv(tmp_path / "in.csv", 1000, bad_every=7)
    ring = Keyring.ephemeral()
    summary = run_mask(
        parse_policy(POLICY),
        ring,
        str(tmp_path / "in.csv"),
        str(tmp_path / "out.csv"),
        max_quarantine="15%",
    )
    assert summary.rows_in == 1000
    assert summary.rows_out + summary.rows_quarantined == 1000
    assert summary.rows_quarantined == len(range(0, 1000, 7))
    q = pacsv.read_csv(tmp_path / "out.quarantine.csv")
    assert q.num_rows == summary.rows_quarantined
    assert set(q.column("_biomask_reason").to_pylist()) == {"dob: not a date in format %Y-%m-%d"}
    # the quarantine copy is masked where possible: no original id or e-mail in it
    text = (tmp_path / "out.quarantine.csv").read_text()
    assert "SUBJ-00000007" not in text and "person.7@example.org" not in text
    manifest = run_manifest(tmp_path / "out.csv.lineage")
    assert manifest["counts"]["rows_in"] == 1000
    assert manifest["counts"]["rows_quarantined"] == summary.rows_quarantined
    verify(tmp_path / "out.csv.lineage", public_key=ring.public_key_pem())


def test_max_quarantine_fails_and_writes_nothing(tmp_path: Path) -> None:
    people_csv(tmp_path / "in.csv", 200, bad_every=3)
    with pytest.raises(
        QuarantineLimitError,
        match=r"^67 of 200 rows quarantined, more than --max-quarantine \(5 rows\); nothing",
    ):
        run_mask(
            parse_policy(POLICY),
            Keyring.ephemeral(),
            str(tmp_path / "in.csv"),
            str(tmp_path / "out.parquet"),
            max_quarantine=5,
        )
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob("out.quarantine*"))
    events = (tmp_path / "out.parquet.lineage" / "openlineage.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["eventType"] == "FAIL"


def test_multi_table_run_one_lineage_record_and_no_leak(tmp_path: Path) -> None:
    data = generate(200, seed=3)
    (tmp_path / "in").mkdir()
    pq.write_table(data.subjects, tmp_path / "in" / "subjects.parquet")
    pq.write_table(data.captures, tmp_path / "in" / "captures.parquet")
    policy = parse_policy(demo_policy_text(), source="policy.yaml")
    ring = Keyring.ephemeral()
    summary = run_mask(policy, ring, str(tmp_path / "in"), str(tmp_path / "out"))
    assert summary.rows_in == data.subjects.num_rows + data.captures.num_rows
    lineage = tmp_path / "out.lineage"
    events = [json.loads(x) for x in (lineage / "openlineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert len({e["run"]["runId"] for e in events}) == 1
    assert {o["name"].rsplit("/", 1)[-1] for o in events[-1]["outputs"]} == {
        "subjects.parquet",
        "captures.parquet",
    }
    # sentinel: no original identifier, name, e-mail or phone in any lineage file
    blobs = b"".join(tree_bytes(lineage).values())
    for col in ("subject_id", "full_name", "email", "phone", "passport_number"):
        for v in data.subjects.column(col).to_pylist()[:50]:
            assert v.encode() not in blobs, col
    for secret in ring._masters.values():
        assert secret.hex().encode() not in blobs
    verify(lineage, public_key=ring.public_key_pem())


def _long_run(tmp_path: Path, rows: int, batch_size: int) -> tuple[Path, dict[str, str], list[str]]:
    """A CSV input, a policy and a keyring, and the command line that masks them."""
    people_csv(tmp_path / "in.csv", rows)
    (tmp_path / "policy.yaml").write_text(POLICY)
    Keyring.create(tmp_path / "keys.json", "pw")
    env = {**os.environ, "BIOMASK_PASSPHRASE": "pw", "BIOMASK_NO_PROGRESS": "1"}
    cmd = [
        sys.executable, "-m", "biomask.cli", "mask", "--policy", "policy.yaml", "--input",
        "in.csv", "--output", "out.parquet", "--keyring", "keys.json",
        "--batch-size", str(batch_size),
    ]  # fmt: skip
    return tmp_path, env, cmd


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_sigkill_leaves_no_output_and_rerun_is_identical(tmp_path: Path, delay: float) -> None:
    work, env, cmd = _long_run(tmp_path, 150_000, batch_size=5000)
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(delay)
    proc.kill()
    proc.wait()
    if proc.returncode == 0:  # finished before the kill: nothing to check at this point
        return
    # Killed before the commit: nothing under the final name. Killed after it (while the
    # lineage was being completed): the output is whole. Never a partial file.
    out = work / "out.parquet"
    survivor = out.read_bytes() if out.exists() else None
    out.unlink(missing_ok=True)
    run = {"cwd": work, "env": env, "check": True, "capture_output": True}
    subprocess.run([*cmd, "--lineage", "again.lineage"], **run)  # type: ignore[call-overload]
    clean = out.read_bytes()
    if survivor is not None:
        assert survivor == clean
    out.unlink()
    subprocess.run([*cmd, "--lineage", "third.lineage"], **run)  # type: ignore[call-overload]
    assert out.read_bytes() == clean


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    work, env, cmd = _long_run(tmp_path, 300_000, batch_size=2000)
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # interrupt only once masking has started (the temporary output exists), so a slow
    # start-up on a loaded machine cannot turn this into a test of Python's import
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(".out.parquet.tmp") for p in work.iterdir()):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived on this machine")
    assert proc.returncode == 130
    assert err.strip() == "biomask: interrupted; nothing was written under the final names"
    assert not (work / "out.parquet").exists()


# -- refused runs, quarantine limits (issue: evidence that cannot be rewritten) ----------------


def _good_run(tmp_path: Path) -> tuple[Keyring, Path]:
    people_csv(tmp_path / "in.csv", 200)
    ring = Keyring.ephemeral()
    run_mask(
        parse_policy(POLICY),
        ring,
        str(tmp_path / "in.csv"),
        str(tmp_path / "out.parquet"),
        lineage_dir=tmp_path / "L",
    )
    return ring, tmp_path / "L"


@pytest.mark.parametrize(
    ("output", "kw", "message"),
    [
        ("out.parquet", {}, "exists"),
        ("out.parquet", {"append": True}, "cannot append to out.parquet"),
        ("new.parquet", {"append": True}, "appending is supported for postgresql outputs only"),
        ("s3://bucket/out.parquet", {}, "unsupported URI 's3://bucket/out.parquet'"),
        ("out.xlsx", {}, "unsupported URI 'out.xlsx'"),
    ],
)
def test_a_run_refused_before_it_starts_leaves_the_lineage_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, kw: dict[str, bool], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    ring, lineage = _good_run(tmp_path)
    before = tree_bytes(lineage)
    out_before = (tmp_path / "out.parquet").read_bytes()
    with pytest.raises(BiomaskError, match=message):
        run_mask(parse_policy(POLICY), ring, "in.csv", output, lineage_dir=lineage, **kw)
    assert tree_bytes(lineage) == before
    assert (tmp_path / "out.parquet").read_bytes() == out_before
    assert verify(lineage, public_key=ring.public_key_pem()).status == "completed"


def test_a_run_over_its_quarantine_limit_records_its_failure_and_keeps_the_good_run(
    tmp_path: Path,
) -> None:
    ring, lineage = _good_run(tmp_path)
    good = verify(lineage, public_key=ring.public_key_pem())
    before = tree_bytes(lineage)
    out_before = (tmp_path / "out.parquet").read_bytes()
    people_csv(tmp_path / "bad.csv", 200, bad_every=50)  # 4 of 200 bad: 2% > the default 1%
    with pytest.raises(QuarantineLimitError, match=r"^4 of 200 rows quarantined, more than"):
        run_mask(
            parse_policy(POLICY),
            ring,
            str(tmp_path / "bad.csv"),
            str(tmp_path / "out.parquet"),
            lineage_dir=lineage,
            overwrite=True,
        )
    assert (tmp_path / "out.parquet").read_bytes() == out_before  # nothing committed
    assert not list(tmp_path.glob("out.quarantine*"))
    after = tree_bytes(lineage)
    for name, data in before.items():  # every earlier byte is still there
        if name in ("audit.jsonl", "openlineage.jsonl"):
            assert after[name].startswith(data) and len(after[name]) > len(data)
        elif name not in ("manifest.json", "manifest.sig"):  # the head is re-signed
            assert after[name] == data, name
    report = verify(lineage, public_key=ring.public_key_pem(), receipt=good.receipt)
    assert report.status == "failed" and report.current_run == good.current_run
    assert report.outputs == [(tmp_path / "out.parquet").resolve()]
    failed = run_manifest(lineage)
    assert failed["status"] == "failed" and "more than --max-quarantine" in failed["run"]["error"]
    pytest.importorskip("torch")
    from biomask.integrations.torch import verified_files

    pem = tmp_path / "signer.pem"
    pem.write_bytes(ring.public_key_pem())
    assert verified_files(tmp_path / "out.parquet", lineage, pem) == [tmp_path / "out.parquet"]


def test_the_default_limit_is_one_percent_and_counts_or_fractions_are_accepted(
    tmp_path: Path,
) -> None:
    people_csv(tmp_path / "in.csv", 300, bad_every=100)  # 3 of 300 = 1%: allowed
    ring = Keyring.ephemeral()
    s = run_mask(parse_policy(POLICY), ring, str(tmp_path / "in.csv"), str(tmp_path / "a.csv"))
    assert s.rows_quarantined == 3
    for limit, ok in [(2, False), (3, True), ("0.5%", False), (0.01, True), ("0", False)]:
        out = tmp_path / f"o{limit}.csv"
        if ok:
            run_mask(parse_policy(POLICY), ring, str(tmp_path / "in.csv"), str(out),
                     max_quarantine=limit)  # fmt: skip
        else:
            with pytest.raises(QuarantineLimitError):
                run_mask(parse_policy(POLICY), ring, str(tmp_path / "in.csv"), str(out),
                         max_quarantine=limit)  # fmt: skip
            assert not out.exists()
    for bad in ("1.5", "-3", "lots", "150%"):
        with pytest.raises(BiomaskError, match="--max-quarantine"):
            QuarantineLimit.parse(bad)


def test_a_rule_failing_on_every_value_stops_the_run_with_its_line(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    # another writer's date format: every value fails the rule's "%Y-%m-%d"
    rows = [f'{{"subject_id": "S{i:06d}", "email": "p{i}@x.org", "dob": "1990.05.{10 + i}"}}'
            for i in range(5)]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(PolicyError) as info:
        run_mask(
            load_policy(policy_file),
            Keyring.ephemeral(),
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "out.csv"),
            max_quarantine=50,  # even a generous limit: this is not a data problem
        )
    msg = str(info.value)
    assert msg.startswith(f"{policy_file}:8: columns.dob: the rule failed on every value of a")
    assert "(5 rows; first reason: dob: not a date in format %Y-%m-%d)" in msg
    assert "1990" not in msg and "\n" not in msg  # no value quoted
    assert not (tmp_path / "out.csv").exists()


def test_lineage_and_quarantine_files_are_private(tmp_path: Path) -> None:
    people_csv(tmp_path / "in.csv", 100, bad_every=50)
    run_mask(
        parse_policy(POLICY),
        Keyring.ephemeral(),
        str(tmp_path / "in.csv"),
        str(tmp_path / "sub" / "out.csv"),
        max_quarantine=2,
    )
    lineage = tmp_path / "sub" / "out.csv.lineage"
    paths = [lineage, *lineage.rglob("*")]
    assert len(paths) > 10
    for p in paths:
        assert (p.stat().st_mode & 0o777) == (0o700 if p.is_dir() else 0o600), p
    assert (tmp_path / "sub" / "out.quarantine.csv").stat().st_mode & 0o777 == 0o600


def test_progress_names_each_table_with_its_row_count(tmp_path: Path) -> None:
    """Parquet footers give each table's total before its first batch; CSV has none."""
    data = generate(60, seed=3, with_notes=False)
    (tmp_path / "in").mkdir()
    pq.write_table(data.subjects, tmp_path / "in" / "subjects.parquet")
    pacsv.write_csv(data.subjects.select(["subject_id"]), tmp_path / "people.csv")
    policy = parse_policy(
        "version: 1\ndataset: d\nunlisted: drop\ntables:\n"
        "  subjects: {columns: {subject_id: {op: tokenize, domain: subject}}}\n"
    )
    calls: list[tuple[str, int, int | None]] = []
    run_mask(policy, Keyring.ephemeral(), str(tmp_path / "in"), str(tmp_path / "out"),
             batch_size=25, progress=lambda t, d, n: calls.append((t, d, n)))  # fmt: skip
    assert calls == [("subjects", 0, 60), ("subjects", 25, 60), ("subjects", 50, 60),
                     ("subjects", 60, 60)]  # fmt: skip
    calls.clear()
    one = parse_policy(
        "version: 1\ndataset: p\ncolumns: {subject_id: {op: tokenize, domain: subject}}\n"
    )
    run_mask(one, Keyring.ephemeral(), str(tmp_path / "people.csv"), str(tmp_path / "p.csv"),
             progress=lambda t, d, n: calls.append((t, d, n)))  # fmt: skip
    assert calls == [("p", 0, None), ("p", 60, None)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_text_cell_over_max_text_bytes_is_quarantined_in_every_format(
    tmp_path: Path, fmt: str
) -> None:
    policy = parse_policy(
        "version: 1\ndataset: notes\ncolumns:\n  id: {op: keep}\n"
        "  note: {op: text, max_text_bytes: 4096}\n"
    )
    notes = ["All ten fingers captured."] * 299 + ["Queue was long. " * 400]
    table = pa.table({"id": list(range(300)), "note": notes})
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, src)
    elif fmt == "csv":
        pacsv.write_csv(table, src)
    else:
        src.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    summary = run_mask(policy, Keyring.ephemeral(), str(src), str(tmp_path / f"out.{fmt}"))
    assert (summary.rows_out, summary.rows_quarantined) == (299, 1)
    q = next(tmp_path.glob("out.quarantine.*"))
    text = q.read_text() if fmt != "parquet" else str(pq.read_table(q).to_pylist())
    assert "text cell larger than max_text_bytes (4,096 bytes); not masked" in text
    assert "Queue was long" not in text
