"""The four commands end to end: outputs, counts, lineage, dossier; encrypted templates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from biomask.cli import main
from biomask.demo import generate
from biomask.keys import Keyring
from biomask.lineage import verify
from biomask.pipeline import run_mask
from biomask.policies import parse_policy

POLICY = """\
version: 1
dataset: identity-test
unlisted: keep
entities:
  subject: {column: subject_id}
tables:
  subjects:
    columns:
      subject_id: {op: tokenize, domain: subject}
      gender:     {op: keep, quasi_identifier: true}
      nationality: {op: keep, quasi_identifier: true}
  captures:
    columns:
      subject_id: {op: tokenize, domain: subject}
      age:        {op: keep, quasi_identifier: true}
      template:   {op: encrypt, entity: subject, per_entity_key: true}
"""


def run_manifest(lineage: Path) -> dict:
    """The manifest of the directory's last run (``runs/<id>/manifest.json``)."""
    head = json.loads((lineage / "manifest.json").read_text())
    last = next(r for r in head["runs"] if r["run_id"] == head["last_run"])
    return json.loads((lineage / last["manifest"]).read_text())


def pairs_of(path: Path) -> set[tuple[int, int]]:
    t = pq.read_table(path)
    return set(zip(t["a_row"].to_pylist(), t["b_row"].to_pylist(), strict=True))


def test_leakage_writes_exactly_the_pairs_and_a_signed_run(
    work: Path, planted: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    s = planted["a"] @ planted["b"].T
    thr = 0.45
    want = set(zip(*[x.tolist() for x in np.nonzero(s >= np.float32(thr))], strict=True))
    assert len(want) >= 3  # the planted people, at least
    args = ["identity", "leakage", "--a", "a.parquet", "--b", "b.parquet", "--id-column",
            "subject_id", "--threshold", str(thr), "--output", "pairs.parquet", "--keyring",
            "k.json", "--block-rows", "150"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"leakage: {len(want)} pairs at cosine >= 0.450000" in out
    assert pairs_of(work / "pairs.parquet") == want
    t = pq.read_table(work / "pairs.parquet")
    assert t.column_names == ["a_id", "b_id", "similarity", "a_row", "b_row"]
    assert set(t["b_id"].to_pylist()) >= {"B0000", "B0001", "B0002"}
    assert "  receipt: " in out
    assert main([*args[:-2], "--overwrite", "--fail-on-match", "--receipts", "r.txt"]) == 1
    kept = (work / "r.txt").read_text().split()
    assert len(kept) == 1 and kept[0] in capsys.readouterr().out
    assert main([*args[:-2], "--overwrite", "--threshold", "0.99", "--fail-on-match"]) == 0
    lineage = work / "pairs.parquet.lineage"
    report = verify(lineage, public_key=Keyring.open(work / "k.json").public_key_pem())
    assert report.checks
    dossier = json.loads((lineage / "dossier.json").read_text())
    assert dossier["run"]["command"] == "identity.leakage"
    assert dossier["identity"]["pairs"] == 0  # the last run's
    manifest = run_manifest(lineage)
    assert {d["role"] for d in manifest["datasets"]} == {"input", "output"}
    assert "identity" in (lineage / "dossier.html").read_text()


def test_leakage_at_an_fmr_calibrated_on_a_reference(work: Path, planted: dict) -> None:
    rng = np.random.default_rng(9)
    from tests.identity.conftest import unit, write_set

    write_set(work / "ref.parquet", [f"R{i}" for i in range(500)], unit(rng, 500, 64))
    assert main(["identity", "calibrate", "--input", "ref.parquet", "--id-column",
                 "subject_id", "--fmr", "1e-3", "--report", "cal.json"]) == 0  # fmt: skip
    cal = json.loads((work / "cal.json").read_text())
    assert main(["identity", "leakage", "--a", "a.parquet", "--b", "b.parquet", "--id-column",
                 "subject_id", "--fmr", "1e-3", "--reference", "ref.parquet", "--output",
                 "p.parquet", "--report", "leak.json"]) == 0  # fmt: skip
    leak = json.loads((work / "leak.json").read_text())
    assert leak["threshold"] == cal["threshold"]
    assert leak["threshold_from"]["fmr_achieved"] <= 1e-3
    s = planted["a"] @ planted["b"].T
    assert leak["pairs"] == int((s >= np.float32(cal["threshold"])).sum())


def test_filter_moves_every_row_of_removed_ids_with_a_reason(work: Path, planted: dict) -> None:
    rng = np.random.default_rng(11)
    from tests.identity.conftest import near, unit, write_set

    base = unit(rng, 300, 64)
    v = np.concatenate([base, near(rng, base, 0.3)])
    ids = [f"P{i:03d}" for i in range(300)] * 2
    v[300 + 5] = near(rng, base[7:8], 0.3)[0]  # P005's second capture is P007's face
    v[300 + 9] = near(rng, base[8:9], 0.3)[0]  # and P009's is P008's
    group = pa.array(["x" if i % 3 else "y" for i in range(600)])
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    write_set(work / "in.parquet", ids, v, group=group)
    (work / "p.yaml").write_text(
        "version: 1\ndataset: f\nunlisted: keep\ncolumns:\n  group: {op: keep, "
        "quasi_identifier: true}\n"
    )
    assert main(["identity", "filter", "--input", "in.parquet", "--output", "out.parquet",
                 "--id-column", "subject_id", "--threshold", "0.7", "--policy", "p.yaml",
                 "--keyring", "k.json"]) == 0  # fmt: skip
    kept = pq.read_table(work / "out.parquet")
    gone = pq.read_table(work / "out.removed.parquet")
    assert kept.num_rows + gone.num_rows == 600
    removed = set(gone["subject_id"].to_pylist())
    assert len(removed) == 2 and len(removed & {"P005", "P007"}) == 1
    assert len(removed & {"P008", "P009"}) == 1
    assert not removed & set(kept["subject_id"].to_pylist())  # every row of a removed id
    assert gone.num_rows == 4
    reason = gone["removed_reason"].to_pylist()[0]
    assert reason.startswith("near-duplicate of P0") and ">= threshold 0.7000" in reason
    rep = json.loads((work / "out.parquet.identity.json").read_text())
    assert rep["ids_before"] == 300 and rep["ids_after"] == 298
    assert rep["retained_id_fraction"] == pytest.approx(298 / 300, abs=1e-6)
    shift = rep["quasi_identifiers"]["f.group"]
    assert shift["before_total"] == 600 and shift["after_total"] == 596
    lineage = work / "out.parquet.lineage"
    verify(lineage, public_key=Keyring.open(work / "k.json").public_key_pem())
    manifest = run_manifest(lineage)
    assert manifest["counts"]["rows_in"] == 600 and manifest["counts"]["rows_quarantined"] == 4
    dossier = json.loads((lineage / "dossier.json").read_text())
    assert dossier["identity"]["quasi_identifiers"]["f.group"]["after_total"] == 596
    # a second run of the same input removes the same ids (deterministic greedy)
    assert main(["identity", "filter", "--input", "in.parquet", "--output", "out.parquet",
                 "--id-column", "subject_id", "--threshold", "0.7", "--policy", "p.yaml",
                 "--keyring", "k.json", "--overwrite"]) == 0  # fmt: skip
    assert set(pq.read_table(work / "out.removed.parquet")["subject_id"].to_pylist()) == removed


@pytest.fixture()
def export(work: Path) -> dict[str, object]:
    """A small two-table export, masked (tokens, encrypted templates) by POLICY."""
    data = generate(60, seed=3, with_notes=False, template_dim=256)
    (work / "plain").mkdir()
    pq.write_table(data.subjects, work / "plain" / "subjects.parquet")
    pq.write_table(data.captures, work / "plain" / "captures.parquet")
    (work / "policy.yaml").write_text(POLICY)
    ring = Keyring.create(work / "k.json")
    policy = parse_policy(POLICY.encode(), source=str(work / "policy.yaml"))
    run_mask(policy, ring, str(work / "plain"), str(work / "masked"))
    return {"data": data, "ring": ring}


def test_encrypted_templates_decrypt_batch_by_batch_and_match_plain(
    work: Path, export: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--id-column", "subject_id", "--threshold", "0.5"]
    assert main(["identity", "filter", "--input", "plain", "--output", "fplain", *common,
                 "--policy", "policy.yaml", "--report", "plain.json"]) == 0  # fmt: skip
    capsys.readouterr()
    # without the keyring, encrypted templates are refused with a clear message
    assert main(["identity", "filter", "--input", "masked", "--output", "fm", *common,
                 "--policy", "policy.yaml"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "column 'template' is encrypted; decrypting it needs --keyring" in err
    assert main(["identity", "filter", "--input", "masked", "--output", "fmasked", *common,
                 "--policy", "policy.yaml", "--keyring", "k.json", "--report", "m.json"]) == 0  # fmt: skip
    plain = json.loads((work / "plain.json").read_text())
    masked = json.loads((work / "m.json").read_text())
    assert plain["ids_removed"] == masked["ids_removed"] == 1  # generate(60) plants one
    assert masked["input"]["templates_compared"] == export["data"].captures.num_rows
    # the same people before; which of a duplicate's two ids goes depends on the ids' order
    for name, dist in plain["quasi_identifiers"].items():
        assert masked["quasi_identifiers"][name]["before"] == dist["before"]
    # the kept output still holds ciphertexts only, and they still decrypt
    kept = pq.read_table(work / "fmasked" / "captures.parquet")
    assert pa.types.is_binary(kept.schema.field("template").type)
    assert main(["identity", "calibrate", "--input", "fmasked", "--id-column", "subject_id",
                 "--fmr", "0.01", "--policy", "policy.yaml", "--keyring", "k.json",
                 "--report", "c.json"]) == 0  # fmt: skip
    assert (work / "fmasked.removed" / "subjects.parquet").exists()
    for p in work.rglob("*"):  # no plaintext template written anywhere by these runs
        if p.suffix == ".parquet" and "plain" not in str(p) and p.name != "fplain":
            schema = pq.read_schema(p)
            if "template" in schema.names:
                assert pa.types.is_binary(schema.field("template").type), p


def split_policy() -> str:
    return POLICY.replace("dataset: identity-test", "dataset: split-test")


@pytest.fixture(scope="module")
def demo2000() -> object:
    """2,000 demo subjects (about 6,000 captures), generated once for the split tests."""
    return generate(2000, seed=5, with_notes=False, template_dim=256)


@pytest.fixture()
def big(work: Path, demo2000: object) -> dict[str, object]:
    data = demo2000
    (work / "in").mkdir()
    pq.write_table(data.subjects, work / "in" / "subjects.parquet")
    pq.write_table(data.captures, work / "in" / "captures.parquet")
    (work / "policy.yaml").write_text(split_policy())
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    return {"data": data}


def test_split_is_disjoint_deterministic_and_captures_follow_subjects(
    work: Path, big: dict
) -> None:
    args = ["split", "--policy", "policy.yaml", "--input", "in", "--output", "out", "--keyring",
            "k.json", "--by", "subject", "--ratios", "0.8,0.1,0.1"]  # fmt: skip
    assert main(args) == 0
    names = ("train", "val", "test")
    subj = {n: set(pq.read_table(work / "out" / n / "subjects.parquet")["subject_id"].to_pylist())
            for n in names}  # fmt: skip
    assert sum(len(s) for s in subj.values()) == 2000
    assert not (
        subj["train"] & subj["val"] or subj["train"] & subj["test"] or subj["val"] & subj["test"]
    )
    for n, r in zip(names, (0.8, 0.1, 0.1), strict=True):
        assert abs(len(subj[n]) / 2000 - r) <= 0.02
    caps = 0
    for n in names:
        c = pq.read_table(work / "out" / n / "captures.parquet")
        caps += c.num_rows
        assert set(c["subject_id"].to_pylist()) <= subj[n]  # a capture lands with its subject
    assert caps == big["data"].captures.num_rows
    first = {n: (work / "out" / n / "captures.parquet").read_bytes() for n in names}
    assert main([*args[:6], "out2", *args[7:]]) == 0
    for n in names:
        assert (work / "out2" / n / "captures.parquet").read_bytes() == first[n]
    rep = json.loads((work / "out.split.json").read_text())
    assert rep["subjects"] == 2000 and rep["leaked_pairs"] is None


def test_split_leakage_check_finds_and_merges_one_person_under_two_ids(
    work: Path, big: dict
) -> None:
    dups = big["data"].planted_duplicates
    assert dups.num_rows == 10
    args = ["split", "--policy", "policy.yaml", "--input", "in", "--output", "out", "--keyring",
            "k.json", "--leakage-threshold", "0.5", "--ratios", "0.4,0.3,0.3"]  # fmt: skip
    assert main(args) == 0
    rep = json.loads((work / "out.split.json").read_text())
    leaks = pq.read_table(work / "out.leaks.parquet")
    assert rep["leaked_pairs"] == leaks.num_rows
    planted = {frozenset(p) for p in zip(dups["subject_id"].to_pylist(),
                                         dups["duplicate_id"].to_pylist(), strict=True)}  # fmt: skip
    found = {frozenset(p) for p in zip(leaks["a_id"].to_pylist(), leaks["b_id"].to_pylist(),
                                       strict=True)}  # fmt: skip
    split_of = {}
    for n in ("train", "val", "test"):
        for sid in pq.read_table(work / "out" / n / "subjects.parquet")["subject_id"].to_pylist():
            split_of[sid] = n
    apart = {p for p in planted if len({split_of[x] for x in p}) == 2}
    assert found and found == apart  # exactly the planted people the split separated
    assert pc.all(pc.not_equal(leaks["a_split"], leaks["b_split"])).as_py()
    merge = ["split", "--policy", "policy.yaml", "--input", "in", "--output", "merged",
             "--keyring", "k.json", "--leakage-threshold", "0.5", "--merge-leaks",
             "--ratios", "0.4,0.3,0.3"]  # fmt: skip
    assert main(merge) == 0
    where = {}
    for n in ("train", "val", "test"):
        for s in pq.read_table(work / "merged" / n / "subjects.parquet")["subject_id"].to_pylist():
            where[s] = n
    for pair in found:
        x, y = tuple(pair)
        assert where[x] == where[y]
    merged = json.loads((work / "merged.split.json").read_text())
    assert merged["subjects_moved_by_merge"] == len(found)
    dossier = json.loads((work / "merged.lineage" / "dossier.json").read_text())
    assert dossier["identity"]["subjects_moved_by_merge"] == len(found)


def test_split_bad_input(work: Path, big: dict, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["split", "--policy", "policy.yaml", "--input", "in", "--output", "o", "--keyring",
            "k.json"]  # fmt: skip
    capsys.readouterr()
    assert main([*base, "--ratios", "0.8,0.3"]) == 1
    assert "--ratios 0.8,0.3 sum to 1.1, not 1" in capsys.readouterr().err
    assert main([*base, "--by", "device"]) == 1
    assert "the policy declares no entity 'device' (has: subject)" in capsys.readouterr().err
    assert main([*base, "--merge-leaks"]) == 1
    assert "--merge-leaks needs --leakage-threshold" in capsys.readouterr().err


def test_greedy_order_removes_a_hub_rather_than_everyone_it_matches() -> None:
    from biomask.identity.commands import greedy_keep

    edges = pa.table(
        {
            "a": ["H", "H", "H", "X"],
            "b": ["A", "B", "C", "Y"],
            "similarity": pa.array([0.9, 0.8, 0.7, 0.6], pa.float32()),
        }
    )
    removed, why = greedy_keep(edges)
    assert removed == ["Y", "H"]  # degree 1 first (A, B, C, X kept; Y after X), then H
    assert why["H"][0] == "A" and why["H"][1] == pytest.approx(0.9)
    assert why["Y"] == ("X", pytest.approx(0.6))
