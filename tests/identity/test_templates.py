"""Bad template input ends as one clear line naming the set and column (CLI), never a
traceback; null templates are skipped and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.cli import main
from biomask.identity.templates import TemplateSet
from tests.identity.conftest import unit, write_set


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("biomask: error: ")
    return lines[0][len("biomask: error: ") :]


def leak(a: str = "a.parquet", b: str = "b.parquet", *extra: str) -> list[str]:
    return ["identity", "leakage", "--a", a, "--b", b, "--id-column", "subject_id",
            "--threshold", "0.5", "--report", "r.json", *extra]  # fmt: skip


def test_mixed_lengths(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    write_set(work / "a.parquet", ["x", "y"], unit(rng, 2, 8))
    vals = [unit(rng, 1, 8)[0].tolist(), unit(rng, 1, 7)[0].tolist()]
    pq.write_table(
        pa.table({"subject_id": ["p", "q"], "template": pa.array(vals, pa.list_(pa.float32()))}),
        work / "b.parquet",
    )
    assert main(leak()) == 1
    msg = error_line(capsys)
    assert msg == (
        "b b.parquet: column 'template' has templates of mixed lengths (8 and 7 values, "
        "row 1); every template of a set must have the same length"
    )


def test_sets_of_different_lengths(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    write_set(work / "a.parquet", ["x", "y"], unit(rng, 2, 8))
    write_set(work / "b.parquet", ["p", "q"], unit(rng, 2, 16))
    assert main(leak()) == 1
    assert "templates of a a.parquet have 8 values and those of b b.parquet 16" in error_line(
        capsys
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.nan, "has a template with NaN or infinite values (row 2)"),
        (np.inf, "has a template with NaN or infinite values (row 2)"),
        (0.0, "has a zero vector (row 2): it has no direction, so its cosine similarity is "
              "undefined"),
    ],
)  # fmt: skip
def test_nan_and_zero_vectors(
    work: Path, capsys: pytest.CaptureFixture[str], value: float, expected: str
) -> None:
    rng = np.random.default_rng(0)
    v = unit(rng, 4, 8)
    v[2] = value if value != 0.0 else 0.0
    write_set(work / "a.parquet", list("wxyz"), v)
    write_set(work / "b.parquet", ["p"], unit(rng, 1, 8))
    assert main(leak()) == 1
    assert error_line(capsys) == f"a a.parquet: column 'template' {expected}"


def test_missing_id_column(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    write_set(work / "a.parquet", ["x"], unit(rng, 1, 8))
    write_set(work / "b.parquet", ["p"], unit(rng, 1, 8))
    args = leak()
    args[args.index("subject_id")] = "person"
    assert main(args) == 1
    assert (
        error_line(capsys) == "a a.parquet: no id column 'person' (columns: subject_id, template)"
    )


def test_fmr_outside_zero_one_and_missing_reference(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    write_set(work / "a.parquet", ["x"], unit(rng, 1, 8))
    write_set(work / "b.parquet", ["p"], unit(rng, 1, 8))
    base = ["identity", "leakage", "--a", "a.parquet", "--b", "b.parquet", "--id-column",
            "subject_id"]  # fmt: skip
    assert main([*base, "--fmr", "1.5", "--reference", "a.parquet"]) == 1
    assert error_line(capsys) == (
        "--fmr 1.5 is outside (0, 1): a false-match rate is a fraction such as 1e-4"
    )
    assert main([*base, "--fmr", "1e-4"]) == 1
    assert "--fmr needs a --reference set" in error_line(capsys)
    assert main(base) == 1
    assert error_line(capsys) == "give --threshold X, or --fmr F with a --reference set"
    assert main([*base, "--threshold", "1.5"]) == 1
    assert "--threshold 1.5 is not a cosine similarity" in error_line(capsys)
    cal = ["identity", "calibrate", "--input", "a.parquet", "--id-column", "subject_id"]
    assert main([*cal, "--fmr", "0"]) == 1
    assert "--fmr 0.0 is outside (0, 1)" in error_line(capsys)


def test_reference_too_small_on_the_command_line(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    write_set(work / "a.parquet", [f"x{i}" for i in range(30)], unit(rng, 30, 8))
    write_set(work / "b.parquet", ["p"], unit(rng, 1, 8))
    base = ["identity", "leakage", "--a", "a.parquet", "--b", "b.parquet", "--id-column",
            "subject_id", "--fmr", "1e-3", "--reference", "a.parquet"]  # fmt: skip
    assert main(base) == 1
    assert error_line(capsys) == (
        "reference a.parquet is too small for FMR 0.001: its 30 templates of 30 ids give 435 "
        "impostor pairs, and that FMR needs at least 10,000 trials (10 / FMR; e.g. 142 "
        "templates of different ids); add templates or raise --fmr"
    )


def test_bytes_without_encryption_metadata(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"subject_id": ["x"], "template": [b"\x00" * 32]}), work / "a.parquet")
    write_set(work / "b.parquet", ["p"], unit(np.random.default_rng(0), 1, 8))
    assert main(leak()) == 1
    assert "a a.parquet: column 'template' holds bytes but no biomask encryption metadata" in (
        error_line(capsys)
    )


def test_missing_ids_are_refused_and_null_templates_counted(work: Path) -> None:
    vals = [[1.0, 0.0], None, [0.0, 1.0]]
    tpl = pa.array(vals, pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"subject_id": ["a", "b", "c"], "template": tpl}), work / "n.parquet")
    ts = TemplateSet("n.parquet", "subject_id", "template")
    blocks = list(ts.batches())
    assert ts.skipped == {"no template": 1} and ts.rows_read == 3 and ts.rows_used == 2
    assert blocks[0].rows.tolist() == [0, 2]
    pq.write_table(pa.table({"subject_id": ["a", None], "template": tpl[:2]}), work / "m.parquet")
    with pytest.raises(Exception, match="column 'subject_id' has 1 missing ids"):
        list(TemplateSet("m.parquet", "subject_id", "template").batches())
