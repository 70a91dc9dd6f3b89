"""E-mail local parts too short to hide well are counted over the run and reported.

``email`` permutes a local part whose shape has fewer than 10^6 values (``info``,
``j.li``) within that small space: its token is distinct, but weakly hidden. The run
counts such addresses per column, distinct over the whole run (not per batch), and says
so with the fix in the run summary, the CLI's output and lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.cli import main
from biomask.keys import Keyring
from biomask.lineage import verify
from biomask.pipeline import run_mask
from biomask.policies import parse_policy
from tests.lineage.conftest import run_manifest

POLICY = """\
version: 1
dataset: contacts
columns:
  email: {op: email, domain: email}
  backup: {op: email, domain: email}
"""

#: weak local parts (shape sizes): info 26**4, j.li 26**3, ab12 26**2 * 10**2,
#: a1234 26 * 10**4; "INFO@a.org" is "info@a.org" in another case: one address
WEAK = ["info@a.org", "j.li@a.org", "info@b.org", "ab12@a.org", "a1234@a.org", "INFO@a.org"]
#: not weak: abcde 26**5, a12345 26 * 10**5, person.N 26**6 * 10**k
STRONG = ["abcde@a.org", "a12345@a.org"] + [f"person.{i}@example.org" for i in range(40)]


def _table(rows: int) -> pa.Table:
    """Every weak address recurs in every batch of 10 rows, among strong ones."""
    values = WEAK + STRONG
    email = [values[i % len(values)] for i in range(rows)]
    backup = [STRONG[i % len(STRONG)] for i in range(rows)]
    backup[3] = "root@a.org"  # one weak address in the second column
    email[5] = "not an address"  # quarantined, never counted
    return pa.table({"email": email, "backup": backup})


def _run(tmp_path: Path, batch_size: int) -> tuple[object, Path]:
    pq.write_table(_table(480), tmp_path / "in.parquet")
    ring = Keyring.ephemeral()
    out = tmp_path / f"out-{batch_size}.parquet"
    summary = run_mask(
        parse_policy(POLICY),
        ring,
        str(tmp_path / "in.parquet"),
        str(out),
        batch_size=batch_size,
        max_quarantine=10,
    )
    verify(Path(f"{out}.lineage"), public_key=ring.public_key_pem())
    return summary, Path(f"{out}.lineage")


@pytest.mark.parametrize("batch_size", [10, 480])
def test_weak_local_parts_are_counted_distinct_over_the_run(
    tmp_path: Path, batch_size: int
) -> None:
    summary, lineage = _run(tmp_path, batch_size)
    # info@a.org, j.li@a.org, info@b.org, ab12@a.org, a1234@a.org (INFO@a.org is one of
    # them): 5, however many batches each recurs in; root@a.org in the other column
    assert summary.weak_tokens == {"backup": 1, "email": 5}  # type: ignore[attr-defined]
    assert summary.rows_quarantined == 1  # type: ignore[attr-defined]
    notes = summary.notes  # type: ignore[attr-defined]
    assert len(notes) == 2
    assert notes[1].startswith("email column 'email': 5 distinct addresses with a local part")
    assert "hash (length >= 32) or redact" in notes[1]
    assert notes[0].startswith("email column 'backup': 1 distinct address with")
    manifest = run_manifest(lineage)
    assert manifest["counts"]["weak_tokens"] == {"backup": 1, "email": 5}
    events = [json.loads(x) for x in (lineage / "openlineage.jsonl").read_text().splitlines()]
    complete = [e for e in events if e["eventType"] == "COMPLETE"][-1]
    assert complete["run"]["facets"]["biomask_masking"]["weakTokens"] == {
        "backup": 1,
        "email": 5,
    }
    # the counters name columns, never a value or a token
    blob = json.dumps(manifest) + json.dumps(complete)
    assert "info" not in blob and "j.li" not in blob


def test_no_weak_local_part_no_note(tmp_path: Path) -> None:
    pq.write_table(pa.table({"email": STRONG, "backup": STRONG}), tmp_path / "in.parquet")
    summary = run_mask(
        parse_policy(POLICY),
        Keyring.ephemeral(),
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out.parquet"),
    )
    assert summary.weak_tokens == {}
    assert summary.notes == []
    assert run_manifest(tmp_path / "out.parquet.lineage")["counts"]["weak_tokens"] == {}


def test_the_cli_prints_the_count_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "test passphrase")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY)
    pq.write_table(_table(480), tmp_path / "in.parquet")
    assert main(["keys", "init", "--keyring", "keys.json"]) == 0
    capsys.readouterr()
    args = ["mask", "--policy", "policy.yaml", "--input", "in.parquet"]
    args += ["--output", "out.parquet", "--keyring", "keys.json", "--max-quarantine", "10"]
    assert main([*args, "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    lines = [x.strip() for x in out.splitlines() if x.strip().startswith("note:")]
    assert lines == [
        "note: email column 'backup': 1 distinct address with a local part of fewer than "
        "10^6 possible values of its shape (e.g. 'info', 'j.li'): their tokens never merge "
        "with another address but hide the original weakly; to hide them, mask this column "
        "with hash (length >= 32) or redact",
        "note: email column 'email': 5 distinct addresses with a local part of fewer than "
        "10^6 possible values of its shape (e.g. 'info', 'j.li'): their tokens never merge "
        "with another address but hide the original weakly; to hide them, mask this column "
        "with hash (length >= 32) or redact",
    ]
