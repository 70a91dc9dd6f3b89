"""The demo export masked at 20,000 and 200,000 subjects: no identifier merges, no join grows.

Tokens are keyed permutations (biomask.masking.permute), so every identifier column keeps
its number of distinct values exactly, and every join between the masked tables returns
exactly the rows it returned before masking.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import biomask
from biomask.demo import generate
from biomask.demo.run import demo_policy_text
from biomask.keys import Keyring
from biomask.policies import parse_policy

RING = Keyring.ephemeral()
#: the demo's own rules, less the text and template rules (not identifiers, and slow)
POLICY = parse_policy(
    "\n".join(
        line
        for line in demo_policy_text().splitlines()
        if "operator_notes:" not in line and "template:" not in line
    )
    + "\n"
)
IDS = {
    "subjects": ["subject_id", "passport_number", "email", "phone"],
    "captures": ["capture_id", "subject_id"],
}


def _distinct(t: pa.Table, col: str) -> int:
    return len(pc.unique(t.column(col).combine_chunks().drop_null()))


def _joins(subjects: pa.Table, captures: pa.Table) -> dict[str, int]:
    s = subjects.select(["subject_id", "passport_number"])
    c = captures.select(["capture_id", "subject_id"])
    return {
        "captures-subjects": c.join(s, "subject_id", join_type="inner").num_rows,
        "captures-captures": c.join(
            c.rename_columns(["capture_id2", "subject_id"]), "subject_id", join_type="inner"
        ).num_rows,
        "subjects-subjects": s.join(
            s.rename_columns(["subject_id", "p2"]), "subject_id", join_type="inner"
        ).num_rows,
    }


@pytest.mark.parametrize(
    "subjects", [20_000, pytest.param(200_000, marks=pytest.mark.slow)], ids=["20k", "200k"]
)
def test_demo_keeps_distinct_counts_and_join_sizes(subjects: int) -> None:
    data = generate(subjects, with_notes=False, with_templates=False)
    tables = {"subjects": data.subjects, "captures": data.captures}
    masked = {
        name: biomask.mask(
            t.drop_columns([c for c in ("operator_notes", "template") if c in t.column_names]),
            POLICY,
            RING,
            table=name,
        )
        for name, t in tables.items()
    }
    for name, cols in IDS.items():
        assert masked[name].num_rows == tables[name].num_rows
        for col in cols:
            assert _distinct(masked[name], col) == _distinct(tables[name], col), (name, col)
    assert _joins(masked["subjects"], masked["captures"]) == _joins(data.subjects, data.captures)
    # the subject ids are the same set in both masked tables (one domain)
    assert set(masked["captures"].column("subject_id").to_pylist()) <= set(
        masked["subjects"].column("subject_id").to_pylist()
    )
