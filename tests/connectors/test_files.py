"""File connectors: round trips, atomic output, determinism, partitions, URI helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomask.connectors import (
    REJECT_COLUMN,
    DatasetRef,
    Sink,
    Source,
    display_uri,
    open_sink,
    open_source,
    open_tables,
    quarantine_uri,
    table_sink_uri,
)
from biomask.errors import ConnectorError, OutputExistsError

from .conftest import enrolment_table

FORMATS = ["parquet", "csv", "jsonl", "arrow"]


def write(uri: str, table: pa.Table, **kw: object) -> Sink:
    sink = open_sink(uri, table.schema, **kw)  # type: ignore[arg-type]
    for batch in table.to_batches(max_chunksize=97):
        sink.write(batch)
    sink.commit()
    return sink


def read(uri: str, batch_size: int = 65_536) -> pa.Table:
    src = open_source(uri, batch_size=batch_size)
    batches = list(src.batches())
    assert all(b.num_rows <= batch_size for b in batches)
    table = pa.Table.from_batches(batches, schema=src.schema)
    if REJECT_COLUMN in table.column_names:
        assert table.column(REJECT_COLUMN).null_count == table.num_rows
        table = table.drop_columns([REJECT_COLUMN])
    return table


def same_rows(got: pa.Table, want: pa.Table) -> None:
    assert got.num_rows == want.num_rows
    assert got.column_names == want.column_names
    assert got.cast(want.schema).equals(want), (got.slice(0, 3), want.slice(0, 3))


def make_input(tmp: Path, kind: str, table: pa.Table) -> str:
    """Write ``table`` as input of ``kind``: a format name, or dir-<format> (3 files)."""
    if kind.startswith("dir-"):
        fmt = kind[4:]
        d = tmp / f"in-{fmt}"
        d.mkdir()
        third = table.num_rows // 3
        for i, part in enumerate(
            [table.slice(0, third), table.slice(third, third), table.slice(2 * third)]
        ):
            write(str(d / f"part-{i}.{fmt}"), part)
        return str(d)
    uri = str(tmp / f"in.{kind}")
    write(uri, table)
    return uri


# --------------------------------------------------------------------------------------
# rows in == rows out for every pair
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("src", [*FORMATS, "dir-parquet", "dir-csv", "dir-jsonl", "dir-arrow"])
@pytest.mark.parametrize("dst", [*FORMATS, "dir"])
def test_round_trip_every_pair(tmp_path: Path, src: str, dst: str) -> None:
    table = enrolment_table(1000)
    uri = make_input(tmp_path, src, table)
    source = open_source(uri, batch_size=128)
    out = str(tmp_path / ("out/" if dst == "dir" else f"out.{dst}"))
    sink = open_sink(out, source.schema)
    rows = 0
    for batch in source.batches():
        assert batch.num_rows <= 128
        rows += batch.num_rows
        sink.write(batch)
    sink.commit()
    assert rows == table.num_rows
    same_rows(read(out), table)
    ref = sink.ref()
    assert ref.namespace == "file" and Path(ref.name).is_absolute()
    assert ref.files and all(f.exists() for f in ref.files)


def test_source_and_sink_satisfy_protocols(tmp_path: Path) -> None:
    uri = make_input(tmp_path, "parquet", enrolment_table(10))
    src = open_source(uri)
    assert isinstance(src, Source)
    sink = open_sink(str(tmp_path / "o.parquet"), src.schema)
    assert isinstance(sink, Sink)
    sink.abort()
    ref = src.ref()
    assert isinstance(ref, DatasetRef)
    assert ref.name == str(Path(uri).resolve())
    assert ref.files == (Path(uri).resolve(),)


def test_types_survive_parquet_and_arrow(tmp_path: Path) -> None:
    table = pa.table(
        {
            "tpl": pa.array([b"\x00\xff", None, b""], pa.binary()),
            "tags": pa.array([["a", "b"], None, []], pa.list_(pa.string())),
            "d": pa.array([1, 2, None], pa.date32()),
            "i8": pa.array([1, None, -1], pa.int8()),
        }
    )
    for fmt in ("parquet", "arrow"):
        uri = str(tmp_path / f"t.{fmt}")
        write(uri, table)
        assert read(uri).equals(table)


def test_binary_is_base64_in_text_formats(tmp_path: Path) -> None:
    table = pa.table({"tpl": pa.array([b"\x00\xff", None], pa.binary())})
    for fmt in ("csv", "jsonl"):
        uri = str(tmp_path / f"t.{fmt}")
        write(uri, table)
        assert read(uri).column("tpl").to_pylist() == ["AP8=", None]


def test_csv_keeps_leading_zeros_and_na(tmp_path: Path) -> None:
    p = tmp_path / "ids.csv"
    p.write_text('phone,nat,n\n0612345678,NA,1\n0712345678,"",2\n,FR,3\n')
    t = read(str(p))
    assert t.schema.field("phone").type == pa.string()
    assert t.column("phone").to_pylist() == ["0612345678", "0712345678", None]
    assert t.column("nat").to_pylist() == ["NA", "", "FR"]
    assert t.schema.field("n").type == pa.int64()


def test_csv_multiline_values(tmp_path: Path) -> None:
    table = pa.table({"notes": ["line one\nline two", 'quote " inside', "plain"]})
    uri = str(tmp_path / "m.csv")
    write(uri, table)
    same_rows(read(uri), table)


# --------------------------------------------------------------------------------------
# hypothesis: random tables round-trip through each format
# --------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=12)
_rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(-(2**62), 2**62)),
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64)),
        st.one_of(st.none(), _text),
        st.one_of(st.none(), st.booleans()),
    ),
    min_size=1,
    max_size=60,
)


def _random_table(rows: list[tuple[object, ...]]) -> pa.Table:
    ints, floats, texts, bools = (list(c) for c in zip(*rows, strict=True))
    return pa.table(
        {
            "i": pa.array(ints, pa.int64()),
            "f": pa.array(floats, pa.float64()),
            # A prefix keeps CSV's type inference from reading text as numbers or bools,
            # which is what CSV does to any column (and why Parquet is the default).
            "s": pa.array([None if t is None else f"s{t}" for t in texts], pa.string()),
            "b": pa.array(bools, pa.bool_()),
        }
    )


@pytest.mark.parametrize("fmt", FORMATS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=_rows)
def test_random_tables_round_trip(tmp_path: Path, fmt: str, rows: list[tuple[object, ...]]) -> None:
    table = _random_table(rows)
    uri = str(tmp_path / f"h-{os.urandom(4).hex()}.{fmt}")
    write(uri, table)
    got = read(uri, batch_size=7)
    if fmt == "csv" or fmt == "jsonl":
        # Text formats infer types: an all-null column comes back as text, a column of
        # integral floats may come back as integers. Values must be equal.
        for name in table.column_names:
            want = table.column(name).to_pylist()
            have = got.column(name).to_pylist()
            if name == "f":
                assert [None if v is None else float(v) for v in have] == want
            elif table.column(name).null_count == table.num_rows:
                assert all(v is None for v in have)
            else:
                assert have == want, name
    else:
        assert got.equals(table)


# --------------------------------------------------------------------------------------
# atomicity and determinism
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["o.parquet", "o.csv", "o.jsonl", "o.arrow", "odir/"])
def test_nothing_under_final_name_before_commit_or_after_abort(tmp_path: Path, out: str) -> None:
    table = enrolment_table(300)
    final = tmp_path / out.rstrip("/")
    sink = open_sink(str(tmp_path / out), table.schema)
    for b in table.to_batches(max_chunksize=50):
        sink.write(b)
    assert not final.exists()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".{final.name}.tmp-")]
    assert len(temps) == 1
    sink.abort()
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    sink2 = open_sink(str(tmp_path / out), table.schema)
    for b in table.to_batches(max_chunksize=50):
        sink2.write(b)
    sink2.commit()
    assert final.exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


@pytest.mark.parametrize("out", ["o.parquet", "odir/"])
def test_overwrite_replaces_only_on_commit(tmp_path: Path, out: str) -> None:
    old, new = enrolment_table(10), enrolment_table(20, seed=5)
    uri = str(tmp_path / out)
    write(uri, old)
    with pytest.raises(OutputExistsError) as err:
        open_sink(uri, new.schema)
    final = str(tmp_path / out.rstrip("/"))
    assert str(err.value) == f"output {final} exists; pass --overwrite to replace it"
    sink = open_sink(uri, new.schema, overwrite=True)
    sink.write(new.to_batches()[0])
    same_rows(read(uri), old)  # still the old output
    sink.commit()
    same_rows(read(uri), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.rstrip("/")]


@pytest.mark.parametrize("out", ["parquet", "csv", "jsonl", "arrow", "dir"])
def test_output_is_byte_identical_across_runs(tmp_path: Path, out: str) -> None:
    table = enrolment_table(2000)

    def run(name: str) -> dict[str, bytes]:
        uri = str(tmp_path / (f"{name}/" if out == "dir" else f"{name}.{out}"))
        sink = write(uri, table, metadata={"biomask.key_id": "k-1", "biomask.policy": "abc"})
        root = Path(sink.ref().name)
        return {
            (f.relative_to(root).as_posix() if out == "dir" else "file"): f.read_bytes()
            for f in sink.ref().files
        }

    assert run("a") == run("b")


def test_metadata_lands_in_schema(tmp_path: Path) -> None:
    table = enrolment_table(5)
    for uri in (str(tmp_path / "m.parquet"), str(tmp_path / "m.arrow")):
        write(uri, table, metadata={"biomask.key_id": "k-1"})
        assert open_source(uri).schema.metadata[b"biomask.key_id"] == b"k-1"
    assert pq.read_schema(tmp_path / "m.parquet").metadata[b"biomask.key_id"] == b"k-1"


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path: Path) -> None:
    stale = tmp_path / ".o.parquet.tmp-999999999-deadbeef"
    stale.write_bytes(b"partial")
    live = tmp_path / f".o.parquet.tmp-{os.getpid()}-cafebabe"
    live.write_bytes(b"someone else's")
    sink = open_sink(str(tmp_path / "o.parquet"), enrolment_table(1).schema)
    sink.abort()
    assert not stale.exists()
    assert live.exists()


def test_sink_drops_reject_column(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_bytes(b"a,b\n1,x\n")
    src = open_source(str(p))
    assert src.schema.names == ["a", "b", REJECT_COLUMN]
    sink = open_sink(str(tmp_path / "o.parquet"), src.schema)
    for b in src.batches():
        sink.write(b)
    sink.commit()
    assert pq.read_schema(tmp_path / "o.parquet").names == ["a", "b"]


def test_append_to_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="appending is supported for postgresql"):
        open_sink(str(tmp_path / "o.parquet"), enrolment_table(1).schema, append=True)


# --------------------------------------------------------------------------------------
# directories and hive partitions
# --------------------------------------------------------------------------------------


def test_hive_partitions_are_read_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for year in (2023, 2024):
        for site in ("paris", "rome nord"):
            d = root / f"year={year}" / f"site={site.replace(' ', '%20')}"
            d.mkdir(parents=True)
            pq.write_table(pa.table({"v": [year * 10 + len(site)] * 3}), d / "part-0.parquet")
    (root / "_SUCCESS").write_text("")
    src = open_source(str(root), batch_size=2)
    assert src.schema.names == ["v", "year", "site"]
    assert src.schema.field("year").type == pa.int32()
    assert src.partition_by == ["year", "site"]  # type: ignore[attr-defined]
    got = pa.Table.from_batches(list(src.batches()), src.schema)
    assert got.num_rows == 12
    sink = open_sink(str(tmp_path / "out/"), src.schema, partition_by=src.partition_by)  # type: ignore[attr-defined]
    for b in src.batches():
        sink.write(b)
    sink.commit()
    rel = sorted(f.relative_to(tmp_path / "out").as_posix() for f in sink.ref().files)
    assert rel == [
        "year=2023/site=paris/part-0.parquet",
        "year=2023/site=rome%20nord/part-0.parquet",
        "year=2024/site=paris/part-0.parquet",
        "year=2024/site=rome%20nord/part-0.parquet",
    ]
    assert read(str(tmp_path / "out")).equals(got)
    # pyarrow's own hive reader agrees
    back = pq.read_table(tmp_path / "out")
    assert sorted(back.column("v").to_pylist()) == sorted(got.column("v").to_pylist())
    assert sorted(back.column("year").to_pylist()) == sorted(got.column("year").to_pylist())


def test_directory_sink_rolls_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from biomask.connectors import files

    monkeypatch.setattr(files, "ROWS_PER_FILE", 100)
    table = enrolment_table(450)
    sink = write(str(tmp_path / "out/"), table)
    # Files roll over at batch boundaries once they hold ROWS_PER_FILE rows (batches of 97).
    files = sink.ref().files
    assert [f.name for f in files] == [f"part-{i}.parquet" for i in range(3)]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [194, 194, 62]
    same_rows(read(str(tmp_path / "out")), table)


def test_open_tables_and_table_sink_uri(tmp_path: Path) -> None:
    d = tmp_path / "export"
    d.mkdir()
    write(str(d / "subjects.parquet"), enrolment_table(10))
    write(str(d / "captures.csv"), enrolment_table(20))
    (d / "templates").mkdir()
    write(str(d / "templates" / "part-0.parquet"), enrolment_table(5))
    srcs = open_tables(str(d), ["subjects", "captures", "templates"])
    assert {k: sum(b.num_rows for b in s.batches()) for k, s in srcs.items()} == {
        "subjects": 10,
        "captures": 20,
        "templates": 5,
    }
    assert srcs["captures"].ref().table == "captures"
    out = str(tmp_path / "masked")
    assert table_sink_uri(out, "subjects", str(d)) == f"{out}/subjects.parquet"
    assert table_sink_uri(out, "captures", str(d)) == f"{out}/captures.csv"
    assert table_sink_uri(out + "/", "templates", str(d)) == f"{out}/templates/"
    assert table_sink_uri(out, "x", "postgresql://u@h/db?schema=s") == f"{out}/x.parquet"
    with pytest.raises(ConnectorError) as err:
        open_tables(str(d), ["subjects", "devices"])
    assert str(err.value) == (
        f"table 'devices' not found in {d} (found: captures, subjects, templates)"
    )


def test_uri_helpers() -> None:
    assert quarantine_uri("out/masked.parquet") == "out/masked.quarantine.parquet"
    assert quarantine_uri("out/masked.csv") == "out/masked.quarantine.csv"
    assert quarantine_uri("out/") == "out.quarantine/"
    assert quarantine_uri("out") == "out.quarantine"
    assert quarantine_uri("-", lineage_dir="runs/x.lineage") == "runs/x.quarantine.jsonl"
    assert quarantine_uri("-", lineage_dir="runs/lin") == "runs/lin.quarantine.jsonl"
    with pytest.raises(ConnectorError, match="beside its lineage"):
        quarantine_uri("-")
    assert (
        quarantine_uri("postgresql://u:pw@h:5432/db?table=s.t")
        == "postgresql://u:pw@h:5432/db?table=s.t_quarantine"
    )
    assert display_uri("postgresql://u:s3cret@h:5432/db?table=t") == (
        "postgresql://u@h:5432/db?table=t"
    )
    assert "s3cret" not in display_uri("postgresql://u@h/db?password=s3cret&table=t")
    assert display_uri("data/x.parquet") == "data/x.parquet"


def test_jsonl_field_null_in_first_chunk_takes_later_type(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    lines = ['{"a": 1, "b": null}'] * 9 + ['{"a": 2, "b": false}', '{"a": 3, "b": true}']
    path.write_text("\n".join(lines) + "\n")
    got = read(str(path), batch_size=4)
    assert got.schema.field("b").type == pa.bool_()
    assert got.column("b").to_pylist() == [None] * 9 + [False, True]
    assert got.column("a").to_pylist() == [1] * 9 + [2, 3]


def test_jsonl_field_null_everywhere_loses_no_line(tmp_path: Path) -> None:
    """The scan for a later type finds none: the lines it read are still read (found by
    hypothesis: the eighth of eight lines was dropped)."""
    path = tmp_path / "nulls.jsonl"
    lines = ['{"a": null, "b": null}'] * 6 + ['{"a": 0, "b": null}', '{"a": null, "b": null}']
    path.write_text("\n".join(lines) + "\n")
    got = read(str(path), batch_size=7)
    assert got.num_rows == 8
    assert got.column("a").to_pylist() == [None] * 6 + [0, None]
    assert got.column("b").null_count == 8


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_column_batches_equal_the_selected_columns(tmp_path: Path, fmt: str) -> None:
    from biomask.connectors import open_source

    table = pa.table({"a": [f"x{i}" for i in range(25)], "b": list(range(25)), "c": [1.5] * 25})
    (tmp_path / "d").mkdir()
    for k in range(2):
        write(str(tmp_path / "d" / f"p{k}.{fmt}"), table.slice(k * 12, 13 if k else 12))
    src = open_source(str(tmp_path / "d"), batch_size=7)
    got = pa.Table.from_batches(list(src.column_batches(["b", "a", "nope"])))
    want = pa.Table.from_batches(list(src.batches())).select(["b", "a"])
    assert got.column_names == ["b", "a"] and got.equals(want)


def test_file_connectors_declare_their_capabilities(tmp_path: Path) -> None:
    """The pipeline asks a connector what it can do through the protocols of
    ``connectors.base``, never by probing names; a file source and sink declare theirs."""
    from biomask.connectors import open_sink, open_source
    from biomask.connectors.base import (
        Partitioned,
        Projecting,
        RowEstimating,
        Sealing,
        Sink,
        Source,
    )

    table = pa.table({"a": ["x", "y"], "b": [1, 2]})
    write(str(tmp_path / "in.parquet"), table)
    src = open_source(str(tmp_path / "in.parquet"))
    assert isinstance(src, Source) and isinstance(src, Projecting)
    assert isinstance(src, RowEstimating) and src.row_estimate() == 2
    assert isinstance(src, Partitioned) and src.partition_by == []
    sink = open_sink(str(tmp_path / "out.parquet"), table.schema)
    assert isinstance(sink, Sink) and isinstance(sink, Sealing)
    sink.write(table.to_batches()[0])
    (staged,) = sink.seal()
    assert staged.exists() and not (tmp_path / "out.parquet").exists()
    assert pq.read_table(staged).equals(table)  # sealed: the bytes are final, uncommitted
    sink.commit()
    assert not staged.exists() and pq.read_table(tmp_path / "out.parquet").equals(table)


def test_ciphertext_columns_are_stored_without_compression_dictionary_or_statistics(
    tmp_path: Path,
) -> None:
    """Random bytes gain nothing from zstd or a dictionary, and their min/max would be
    2 KiB of noise per row group; every other column, nested ones too, keeps them."""
    from biomask.connectors.formats.parquet import parquet_options

    n = 50
    schema = pa.schema(
        [
            pa.field("sid", pa.string()),
            pa.field("face", pa.binary()),
            pa.field("emb", pa.list_(pa.float32(), 2)),
        ],
        metadata={"biomask.encrypt.face.type": "fixed_size_list<float>[512]"},
    )
    table = pa.table(
        {
            "sid": [f"S{i % 5}" for i in range(n)],
            "face": [os.urandom(64) for _ in range(n)],
            "emb": [[1.0, 2.0]] * n,
        },
        schema=schema,
    )
    opts = parquet_options(schema)
    pq.write_table(table, tmp_path / "t.parquet", **opts)
    rg = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert cols["face"].compression == "UNCOMPRESSED" and not cols["face"].is_stats_set
    assert "RLE_DICTIONARY" not in cols["face"].encodings
    for plain in ("sid", "emb.list.element"):
        assert cols[plain].compression == "ZSTD" and cols[plain].is_stats_set
    assert "RLE_DICTIONARY" in cols["sid"].encodings
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    # a table without ciphertexts gets the fixed settings unchanged
    assert parquet_options(pa.schema([("sid", pa.string())]))["compression"] == "zstd"


def test_distinct_string_columns_get_no_dictionary_or_statistics(tmp_path: Path) -> None:
    """Tokens of ids have nothing to share in a dictionary and their min/max prune
    nothing; distinct numbers lose only the dictionary; a column that repeats keeps both. The first batch decides, so an empty
    output is still a valid Parquet file."""
    n = 3000
    table = pa.table(
        {
            "token": [f"TK-{i * 7919 % 100_003:06d}" for i in range(n)],
            "city": [("Lyon", "Oslo", "Kyiv")[i % 3] for i in range(n)],
            "age": list(range(n)),
            "grade": [i % 7 for i in range(n)],
        }
    )
    sink = open_sink(str(tmp_path / "out.parquet"), table.schema)
    for b in table.to_batches(max_chunksize=1000):
        sink.write(b)
    sink.commit()
    rg = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0)
    cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert "RLE_DICTIONARY" not in cols["token"].encodings and not cols["token"].is_stats_set
    assert "RLE_DICTIONARY" in cols["city"].encodings and cols["city"].is_stats_set
    assert cols["age"].is_stats_set and cols["token"].compression == "ZSTD"
    # numbers that mostly differ get no dictionary but keep min/max (they prune by range);
    # numbers that repeat keep both
    assert "RLE_DICTIONARY" not in cols["age"].encodings
    assert "RLE_DICTIONARY" in cols["grade"].encodings and cols["grade"].is_stats_set
    assert pq.read_table(tmp_path / "out.parquet").equals(table)
    empty = open_sink(str(tmp_path / "empty.parquet"), table.schema)
    empty.commit()
    assert pq.read_table(tmp_path / "empty.parquet").schema.equals(table.schema)


def test_jsonl_keeps_dates_and_zoned_timestamps(tmp_path: Path) -> None:
    """A date stays a date and a zoned timestamp keeps its instant, in and out."""
    import datetime as dt

    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"dob":"1980-10-09","ts":"2020-01-01T12:00:00+02:00","n":"2020-01-01T12:00:00"}\n'
        '{"dob":"1981-01-31","ts":"2020-01-01T12:00:00Z","n":"2020-01-01T12:00:01"}\n'
        '{"dob":"31/01/1981","ts":"2020-01-01T12:00:00Z","n":"2020-01-01T12:00:01"}\n'
    )
    source = open_source(str(src), batch_size=2)
    schema = source.schema
    assert schema.field("dob").type == pa.date32()
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("n").type == pa.timestamp("us")
    rows = [r for b in source.batches() for r in b.to_pylist()]
    assert rows[0]["dob"] == dt.date(1980, 10, 9)
    assert rows[0]["ts"] == dt.datetime(2020, 1, 1, 10, tzinfo=dt.UTC)
    # a later line that is not a date is a rejected row with the reason, not a crash
    assert rows[2]["dob"] is None
    assert rows[2]["__biomask_reject__"] == (
        "line 3: field 'dob' is not an ISO date (YYYY-MM-DD) like in the first lines"
    )

    out = tmp_path / "out.jsonl"
    batch = pa.record_batch(
        {
            "d": pa.array([dt.date(1980, 10, 9)]),
            "d64": pa.array([dt.datetime(1980, 10, 9)], pa.date64()),
            "t": pa.array([dt.datetime(2020, 1, 1, 12)], pa.timestamp("s", tz="Europe/Paris")),
            "n": pa.array([dt.datetime(2020, 1, 1, 12)], pa.timestamp("s")),
        }
    )
    sink = open_sink(str(out), batch.schema)
    sink.write(batch)
    sink.commit()
    assert json.loads(out.read_text()) == {
        "d": "1980-10-09",
        "d64": "1980-10-09",
        "t": "2020-01-01T13:00:00+01:00",
        "n": "2020-01-01T12:00:00",
    }
    back = open_source(str(out))
    assert back.schema.field("d").type == pa.date32()
    assert back.schema.field("t").type == pa.timestamp("us", tz="UTC")
    # fractions of a second (which pyarrow alone leaves as text) read back as timestamps
    frac = pa.record_batch(
        {
            "n": pa.array(
                [dt.datetime(2020, 1, 1, 12, 0, 0, 250_000), dt.datetime(2020, 1, 1, 12)],
                pa.timestamp("us"),
            ),
            "t": pa.array(
                [dt.datetime(2020, 1, 1, 12, 0, 0, 5_000, tzinfo=dt.UTC), None],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    sink = open_sink(str(tmp_path / "frac.jsonl"), frac.schema)
    sink.write(frac)
    sink.commit()
    back = open_source(str(tmp_path / "frac.jsonl"))
    assert back.schema.field("n").type == pa.timestamp("us")
    assert back.schema.field("t").type == pa.timestamp("us", tz="UTC")
    got = next(iter(back.batches()))
    assert got.select(["n", "t"]).equals(frac)
