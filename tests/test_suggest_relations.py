"""`policy suggest` keeps relationships: keys and foreign keys get one domain.

Each export is drafted, the draft is used unedited for a real masking run, and the masked
tables must keep every join's row count and hold no raw identifier anywhere.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from biomask.connectors import open_sink, open_source
from biomask.demo import DemoData
from biomask.errors import BiomaskError
from biomask.keys import Keyring
from biomask.pipeline import run_mask
from biomask.policies import parse_policy
from biomask.suggest import suggest_policy
from tests.connectors.conftest import PgSchema, pg  # noqa: F401  (the real-server fixture)

#: (table, column) -> (table, column) it refers to, per export
Joins = list[tuple[tuple[str, str], tuple[str, str]]]


def _two_table_int(root: Path) -> Joins:
    """The issue's export: sessions.volunteer_id (int64) refers to volunteers."""
    r = random.Random(3)
    ids = [100_000 + 7 * i for i in range(200)]
    pq.write_table(
        pa.table(
            {
                "volunteer_id": pa.array(ids, pa.int64()),
                "full_name": [f"{r.choice(['Ada', 'Bea', 'Cai'])} Okafor" for _ in ids],
                "height_cm": [r.randint(150, 200) for _ in ids],
                "enrolled": [f"2024-0{r.randint(1, 9)}-1{r.randint(0, 9)}" for _ in ids],
            }
        ),
        root / "volunteers.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "session_id": pa.array(range(1, 601), pa.int64()),
                "volunteer_id": pa.array([r.choice(ids) for _ in range(600)], pa.int64()),
                "score": [r.random() for _ in range(600)],
                "device": [r.choice("ABC") for _ in range(600)],
            }
        ),
        root / "sessions.parquet",
    )
    return [(("sessions", "volunteer_id"), ("volunteers", "volunteer_id"))]


def _string_ids_two_shapes(root: Path) -> Joins:
    """Patients keyed by ids of two shapes (legacy P123456, new PAT-2021-000042), as CSV,
    the foreign key under another name (``visits.patient``), an unnamed integer key too."""
    r = random.Random(5)
    refs = [f"P{r.randint(100_000, 999_999)}" if i % 2 else f"PAT-2021-{i:06d}" for i in range(150)]
    pcsv.write_csv(
        pa.table(
            {
                "patient_ref": refs,
                "badge": pa.array([5_000_000 + 13 * i for i in range(150)], pa.int64()),
                "city": [r.choice(["Lyon", "Paris", "Nice"]) for _ in refs],
            }
        ),
        root / "patients.csv",
    )
    badges = [5_000_000 + 13 * i for i in range(150)]
    pcsv.write_csv(
        pa.table(
            {
                "visit_code": [f"V{i:05d}-{r.choice('ABCDEF')}" for i in range(400)],
                "patient": [r.choice(refs) for _ in range(400)],
                "scanned_badge": pa.array([r.choice(badges) for _ in range(400)], pa.int64()),
                "kind": [r.choice("xy") for _ in range(400)],
            }
        ),
        root / "visits.csv",
    )
    return [
        (("visits", "patient"), ("patients", "patient_ref")),
        (("visits", "scanned_badge"), ("patients", "badge")),
    ]


def _demo(root: Path, demo: DemoData) -> Joins:
    pq.write_table(demo.subjects, root / "subjects.parquet")
    pq.write_table(demo.captures, root / "captures.parquet")
    return [(("captures", "subject_id"), ("subjects", "subject_id"))]


def _read(uri: str) -> pa.Table:
    src = open_source(uri)
    return pa.Table.from_batches(list(src.batches()), schema=src.schema)


def _tables(root: Path) -> dict[str, pa.Table]:
    return {p.stem: _read(str(p)) for p in sorted(root.iterdir()) if p.is_file()}


def _join_rows(tables: dict[str, pa.Table], ref: tuple[str, str], key: tuple[str, str]) -> int:
    left = tables[ref[0]].select([ref[1]]).rename_columns(["k"])
    right = tables[key[0]].select([key[1]]).rename_columns(["k"])
    return left.join(right, "k", join_type="inner").num_rows


@pytest.mark.parametrize("export", ["demo", "two_table_int", "string_ids_two_shapes"])
def test_draft_keeps_every_join_and_leaves_no_raw_identifier(
    export: str, tmp_path: Path, demo: DemoData
) -> None:
    src = tmp_path / "export"
    src.mkdir()
    if export == "demo":
        joins = _demo(src, demo)
    elif export == "two_table_int":
        joins = _two_table_int(src)
    else:
        joins = _string_ids_two_shapes(src)
    draft = suggest_policy(str(src), sample=1000)
    policy = parse_policy(draft, source="draft.yaml")
    specs = policy.table_specs()
    for ref, key in joins:  # one domain per key and its foreign keys
        r_rule, k_rule = specs[ref[0]].columns[ref[1]], specs[key[0]].columns[key[1]]
        assert r_rule.op == k_rule.op and r_rule.op in ("tokenize", "hash"), draft
        assert r_rule.domain_name == k_rule.domain_name, draft
    for spec in specs.values():  # never keep an identifier
        for name, rule in spec.columns.items():
            if name.endswith(("_id", "_ref", "badge")):
                assert rule.op != "keep", f"{name} kept:\n{draft}"

    out = tmp_path / "masked"
    summary = run_mask(
        policy, Keyring.ephemeral(), str(src), str(out), lineage_dir=tmp_path / "lineage"
    )
    assert summary.rows_quarantined == 0
    before, after = _tables(src), _tables(out)
    for ref, key in joins:
        n = _join_rows(before, ref, key)
        assert n == before[ref[0]].num_rows  # every row of the export joins
        assert _join_rows(after, ref, key) == n, f"{ref} -> {key} lost rows"

    raw: set[object] = set()
    for _ref, key in joins:
        raw |= set(before[key[0]].column(key[1]).to_pylist())
    for t, table in after.items():
        for name in table.column_names:
            leaked = raw & set(table.column(name).to_pylist())
            # an integer token may equal some other key by chance: a coincidence, not a
            # raw value in place; strings are shaped tokens and must never match
            if leaked and pa.types.is_integer(table.schema.field(name).type):
                b = before[t].column(name).to_pylist()
                a = table.column(name).to_pylist()
                assert not any(x == y for x, y in zip(b, a, strict=True)), f"{t}.{name}"
            else:
                assert not leaked, f"raw identifiers in {t}.{name}"
    dossier = json.loads((tmp_path / "lineage" / "dossier.json").read_text())
    ids = {f"{t}.{c}" for pair in joins for t, c in pair}
    found = [f for f in dossier["residual_pii"]["findings"] if f["input_column"] in ids]
    assert not [f for f in found if f["hits"]], found  # (a city left in a note is #21's)


def test_unnamed_integer_key_is_review_redacted_when_nothing_refers_to_it(tmp_path: Path) -> None:
    path = tmp_path / "alone.parquet"
    pq.write_table(
        pa.table({"badge": pa.array(range(10_000, 10_100), pa.int64()), "n": [1, 2] * 50}),
        path,
    )
    text = suggest_policy(str(path), scan_text=False)
    rules = parse_policy(text).table_specs()["alone"].columns
    assert rules["badge"].op == "redact"
    assert "REVIEW: 100 distinct integers" in text
    assert rules["n"].op == "keep"  # two values: a measurement, not an id


def test_a_database_export_is_drafted_as_one_multi_table_policy(
    pg: PgSchema,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """``?schema=`` with no table: every table of the schema, keys linked as for files."""
    src = tmp_path / "files"
    src.mkdir()
    ((ref, key),) = _two_table_int(src)
    for f in src.iterdir():
        table = pq.read_table(f)
        sink = open_sink(pg.uri(f.stem), table.schema)
        for batch in table.to_batches():
            sink.write(batch)
        sink.commit()
    uri = f"{pg.base}?schema={pg.schema}"
    draft = suggest_policy(uri, scan_text=False)
    policy = parse_policy(draft)
    assert policy.dataset == pg.schema and sorted(policy.table_specs()) == [
        "sessions",
        "volunteers",
    ]
    specs = policy.table_specs()
    assert specs["sessions"].columns["volunteer_id"] == specs["volunteers"].columns["volunteer_id"]
    out = tmp_path / "masked"
    run_mask(policy, Keyring.ephemeral(), uri, str(out), lineage_dir=tmp_path / "lineage")
    before, after = _tables(src), _tables(out)
    assert _join_rows(after, ref, key) == _join_rows(before, ref, key) == 600
    raw = set(before["volunteers"].column("volunteer_id").to_pylist())
    kept = after["sessions"].column("volunteer_id").to_pylist()
    assert not any(
        a == b for a, b in zip(before["sessions"]["volunteer_id"].to_pylist(), kept, strict=True)
    )
    assert len(raw & set(kept)) < len(raw)  # tokens, not the raw keys


def test_an_empty_database_schema_is_one_clear_error(pg: PgSchema) -> None:  # noqa: F811
    with pytest.raises(BiomaskError, match=r"^no tables to sample in postgresql://"):
        suggest_policy(f"{pg.base}?schema={pg.schema}", scan_text=False)
