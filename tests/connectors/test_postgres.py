"""PostgreSQL connector against the real server: round trips, transactions, credentials."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from biomask.connectors import (
    display_uri,
    open_sink,
    open_source,
    open_tables,
    quarantine_uri,
    table_sink_uri,
)
from biomask.errors import ConnectorError, OutputExistsError

from .conftest import PgSchema, enrolment_table

pytestmark = pytest.mark.postgres

TYPED = """
CREATE TABLE {s}.typed AS
SELECT i AS id,
       'Name ' || i AS name,
       (i * 1.5)::float8 AS score,
       (i % 90)::int2 AS small,
       i::int8 * 1000000000 AS big,
       DATE '2024-01-01' + i AS d,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL '1 minute 7.5 seconds' AS ts,
       decode(md5(i::text), 'hex') AS tpl,
       ARRAY[i, i + 1, NULL] AS ints,
       CASE WHEN i % 5 = 0 THEN NULL ELSE ARRAY['a' || i, NULL] END AS tags,
       i % 2 = 0 AS flag
FROM generate_series(1, 3000) AS i
"""


def copy(src_uri: str, dst_uri: str, **kw: object) -> int:
    src = open_source(src_uri, batch_size=700)
    sink = open_sink(dst_uri, src.schema, **kw)  # type: ignore[arg-type]
    n = 0
    for b in src.batches():
        assert b.num_rows <= 700
        n += b.num_rows
        sink.write(b)
    sink.commit()
    return n


def table_of(uri: str) -> pa.Table:
    src = open_source(uri)
    return pa.Table.from_batches(list(src.batches()), src.schema)


def test_types_round_trip_pg_parquet_pg(pg: PgSchema, tmp_path: Path) -> None:
    pg.execute(TYPED.format(s=pg.schema))
    original = table_of(pg.uri("typed"))
    assert original.num_rows == 3000
    assert original.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert original.schema.field("ints").type == pa.list_(pa.int32())
    parquet = str(tmp_path / "typed.parquet")
    assert copy(pg.uri("typed"), parquet) == 3000
    assert copy(parquet, pg.uri("typed_back")) == 3000
    back = table_of(pg.uri("typed_back"))
    assert back.schema.equals(original.schema, check_metadata=False)
    assert back.equals(original)
    cols = pg.execute(
        "SELECT column_name, udt_name FROM information_schema.columns "
        f"WHERE table_schema = '{pg.schema}' AND table_name = 'typed_back' ORDER BY ordinal_position"
    )
    assert [c[1] for c in cols] == [
        "int4",
        "text",
        "float8",
        "int2",
        "int8",
        "date",
        "timestamptz",
        "bytea",
        "_int4",
        "_text",
        "bool",
    ]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "arrow", "dir"])
def test_rows_in_equal_rows_out_with_files(pg: PgSchema, tmp_path: Path, fmt: str) -> None:
    table = enrolment_table(2000)
    sink = open_sink(pg.uri("src"), table.schema)
    for b in table.to_batches(max_chunksize=333):
        sink.write(b)
    sink.commit()
    out = str(tmp_path / ("d/" if fmt == "dir" else f"o.{fmt}"))
    assert copy(pg.uri("src"), out) == 2000
    assert copy(out, pg.uri("dst")) == 2000
    assert pg.execute(f"SELECT count(*) FROM {pg.schema}.dst") == [(2000,)]
    got = table_of(pg.uri("dst")).select(table.column_names)
    assert got.cast(table.schema).equals(table)


def test_query_source(pg: PgSchema) -> None:
    pg.execute(TYPED.format(s=pg.schema))
    uri = f"{pg.base}?query=SELECT id, name FROM {pg.schema}.typed WHERE id <= 10"
    src = open_source(uri)
    assert src.schema.names == ["id", "name"]
    assert sum(b.num_rows for b in src.batches()) == 10
    ref = src.ref()
    assert ref.namespace == "postgres://127.0.0.1:5432"
    assert ref.name.startswith("test.query_")


def test_uuid_numeric_json_read_as_text(pg: PgSchema) -> None:
    pg.execute(
        f"CREATE TABLE {pg.schema}.odd AS SELECT "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 1.25::numeric(10,2) AS n, "
        "'{\"a\": 1}'::jsonb AS j"
    )
    t = table_of(pg.uri("odd"))
    assert t.schema == pa.schema([("u", pa.string()), ("n", pa.string()), ("j", pa.string())])
    assert t.to_pylist() == [
        {"u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "n": "1.25", "j": '{"a": 1}'}
    ]


def test_sink_is_one_transaction_and_abort_rolls_back(pg: PgSchema) -> None:
    table = enrolment_table(500)
    sink = open_sink(pg.uri("t"), table.schema)
    for b in table.to_batches(max_chunksize=100):
        sink.write(b)
    # Another session sees nothing before commit.
    assert pg.execute(
        f"SELECT count(*) FROM pg_tables WHERE schemaname = '{pg.schema}' AND tablename = 't'"
    ) == [(0,)]
    sink.abort()
    assert pg.execute(
        f"SELECT count(*) FROM pg_tables WHERE schemaname = '{pg.schema}' AND tablename = 't'"
    ) == [(0,)]


def test_failed_overwrite_leaves_target_as_it_was(pg: PgSchema) -> None:
    old = enrolment_table(50)
    copy_table(pg, "t", old)
    new = enrolment_table(400, seed=9)
    sink = open_sink(pg.uri("t"), new.schema, overwrite=True)
    for b in new.to_batches(max_chunksize=100):
        sink.write(b)
    assert pg.execute(f"SELECT count(*) FROM {pg.schema}.t") == [(50,)]  # readers see old
    sink.abort()
    assert pg.execute(f"SELECT count(*) FROM {pg.schema}.t") == [(50,)]
    assert pg.execute(f"SELECT count(*) FROM pg_tables WHERE schemaname = '{pg.schema}'") == [
        (1,)
    ]  # no staging table left behind
    sink = open_sink(pg.uri("t"), new.schema, overwrite=True, metadata={"biomask.key_id": "k9"})
    for b in new.to_batches(max_chunksize=100):
        sink.write(b)
    sink.commit()
    assert pg.execute(f"SELECT count(*) FROM {pg.schema}.t") == [(400,)]
    assert open_source(pg.uri("t")).schema.metadata == {b"biomask.key_id": b"k9"}


def test_write_error_mid_stream_rolls_back(pg: PgSchema) -> None:
    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    pg.execute(f"CREATE TABLE {pg.schema}.t (id int8 PRIMARY KEY, name text)")
    pg.execute(f"INSERT INTO {pg.schema}.t VALUES (1, 'kept')")
    sink = open_sink(pg.uri("t"), schema, append=True)
    sink.write(pa.record_batch([pa.array([2, 3]), pa.array(["x", "y"])], schema=schema))
    with pytest.raises(ConnectorError) as err:
        sink.write(pa.record_batch([pa.array([1]), pa.array(["Secret Name"])], schema=schema))
    assert "Secret Name" not in str(err.value)
    assert "\n" not in str(err.value)
    sink.abort()
    assert pg.execute(f"SELECT id, name FROM {pg.schema}.t") == [(1, "kept")]


def test_append(pg: PgSchema) -> None:
    table = enrolment_table(100)
    copy_table(pg, "t", table)
    sink = open_sink(pg.uri("t"), table.schema, append=True)
    sink.write(table.to_batches()[0])
    sink.commit()
    assert pg.execute(f"SELECT count(*) FROM {pg.schema}.t") == [(200,)]


def test_output_exists(pg: PgSchema) -> None:
    copy_table(pg, "t", enrolment_table(3))
    with pytest.raises(OutputExistsError) as err:
        open_sink(pg.uri("t"), enrolment_table(1).schema)
    assert str(err.value) == (
        f"output postgresql://postgres@127.0.0.1:5432/test?table={pg.schema}.t exists; "
        "pass --overwrite to replace it (or --append to add rows)"
    )


def test_empty_result_creates_empty_table(pg: PgSchema) -> None:
    schema = enrolment_table(1).schema
    sink = open_sink(pg.uri("empty"), schema)
    sink.commit()
    t = table_of(pg.uri("empty"))
    assert t.num_rows == 0 and t.schema.names == schema.names


def test_credentials_never_leak(pg: PgSchema) -> None:
    secret = "hunter2-Very-Secret"
    bad = f"postgresql://postgres:{secret}@127.0.0.1:1/test?table=x"
    with pytest.raises(ConnectorError) as err:
        open_source(bad)
    msg = str(err.value)
    assert msg.startswith("cannot connect to postgresql://postgres@127.0.0.1:1/test: ")
    assert secret not in msg and "\n" not in msg
    # trust auth accepts any password: the URI works, and nothing shows it
    copy_table(pg, "t", enrolment_table(5))
    uri = f"postgresql://postgres:{secret}@127.0.0.1:5432/test?table={pg.schema}.t"
    src = open_source(uri)
    assert secret not in repr(src) and secret not in str(src.ref())
    sink = open_sink(
        f"postgresql://postgres:{secret}@127.0.0.1:5432/test?table={pg.schema}.t2",
        src.schema,
    )
    assert secret not in repr(sink) and secret not in str(sink.ref())
    sink.abort()
    assert secret not in display_uri(uri)
    with pytest.raises(ConnectorError) as err:
        open_source(f"postgresql://postgres:{secret}@127.0.0.1:5432/test?table={pg.schema}.nope")
    assert str(err.value) == (
        f"input postgresql://postgres@127.0.0.1:5432/test?table={pg.schema}.nope not found"
    )


def test_open_tables_and_output_uris(pg: PgSchema) -> None:
    copy_table(pg, "subjects", enrolment_table(10))
    copy_table(pg, "captures", enrolment_table(20))
    uri = f"{pg.base}?schema={pg.schema}"
    srcs = open_tables(uri, ["subjects", "captures"])
    assert {k: sum(b.num_rows for b in s.batches()) for k, s in srcs.items()} == {
        "subjects": 10,
        "captures": 20,
    }
    assert srcs["subjects"].ref().name == f"test.{pg.schema}.subjects"
    assert srcs["subjects"].ref().table == "subjects"
    with pytest.raises(ConnectorError) as err:
        open_tables(uri, ["subjects", "devices"])
    assert str(err.value) == (
        f"table 'devices' not found in postgresql://postgres@127.0.0.1:5432/test schema "
        f"{pg.schema} (found: captures, subjects)"
    )
    out = table_sink_uri(uri, "subjects", uri)
    assert out == f"{pg.base}?table={pg.schema}.subjects"
    assert quarantine_uri(out) == f"{pg.base}?table={pg.schema}.subjects_quarantine"


def copy_table(pg: PgSchema, name: str, table: pa.Table) -> None:
    sink = open_sink(pg.uri(name), table.schema)
    for b in table.to_batches():
        sink.write(b)
    sink.commit()


def test_integer_keys_stay_integer_and_still_join(pg: PgSchema, tmp_path: Path) -> None:
    """bigint and int4 keys tokenized in one domain keep their SQL types and their join."""
    from biomask.keys import Keyring
    from biomask.pipeline import run_mask
    from biomask.policies import parse_policy

    pg.execute(
        f"CREATE TABLE {pg.schema}.subjects AS SELECT i::int8 AS id FROM generate_series(1, 500) i;"
        f"CREATE TABLE {pg.schema}.captures AS SELECT (1 + i % 500)::int4 AS subject_id, i AS n"
        " FROM generate_series(1, 2000) i"
    )
    ring = Keyring.ephemeral()
    for table, col, extra in (
        ("subjects", "id", ""),
        ("captures", "subject_id", "  n: {op: keep}\n"),
    ):
        pol = parse_policy(
            f"version: 1\ndataset: {table}\ncolumns:\n  {col}: {{op: tokenize, domain: subject}}\n"
            + extra
        )
        run_mask(pol, ring, pg.uri(table), pg.uri(f"{table}_masked"),
                 lineage_dir=tmp_path / table)  # fmt: skip
    types = pg.execute(
        "SELECT table_name, data_type FROM information_schema.columns "
        f"WHERE table_schema = '{pg.schema}' AND column_name IN ('id', 'subject_id') "
        "AND table_name LIKE '%_masked' ORDER BY 1"
    )
    assert types == [("captures_masked", "integer"), ("subjects_masked", "bigint")]
    (joined,) = pg.execute(
        f"SELECT count(*) FROM {pg.schema}.captures_masked c "
        f"JOIN {pg.schema}.subjects_masked s ON s.id = c.subject_id"
    )
    assert joined == (2000,)
    (kept,) = pg.execute(
        f"SELECT count(*) FROM {pg.schema}.subjects_masked WHERE id BETWEEN 1 AND 500"
    )
    assert kept[0] < 5  # the keys were replaced, not kept (a token may land in range)


def test_row_estimate_comes_from_the_statistics(pg: PgSchema) -> None:
    """A table's row count for a progress bar: PostgreSQL's statistics, none for a query."""
    table = enrolment_table(700)
    sink = open_sink(pg.uri("est"), table.schema)
    sink.write(table.to_batches()[0])
    sink.commit()
    pg.execute(f"ANALYZE {pg.schema}.est")
    assert open_source(pg.uri("est")).row_estimate() == 700
    query = f"{pg.base}?query=SELECT+*+FROM+{pg.schema}.est"
    assert open_source(query).row_estimate() is None
