"""Bad-input corpus: each case gives ONE clear line (file, line, column), never a value."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.connectors import REJECT_COLUMN, open_sink, open_source
from biomask.errors import ConnectorError, OutputExistsError

SECRET = "Zoë-Secret-Value"  # appears in the data; must never appear in a message

UNSUPPORTED = (
    "use a path ending in .parquet, .csv, .jsonl or .arrow, a directory of them, '-' for "
    "JSON Lines on stdin/stdout, or postgresql://..."
)


def error_of(uri: str) -> str:
    with pytest.raises(ConnectorError) as err:
        src = open_source(uri)
        for _ in src.batches():
            pass
    msg = str(err.value)
    assert "\n" not in msg
    assert SECRET not in msg
    return msg


def rows_of(uri: str) -> list[dict[str, object]]:
    src = open_source(uri)
    return pa.Table.from_batches(list(src.batches()), src.schema).to_pylist()


def test_truncated_parquet(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"name": [SECRET] * 1000, "n": list(range(1000))}), good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 5):
        p = tmp_path / f"cut{cut}.parquet"
        p.write_bytes(data[:cut])
        assert error_of(str(p)) == f"cannot read {p}: not a valid Parquet file"


def test_corrupt_parquet_pages(tmp_path: Path) -> None:
    p = tmp_path / "corrupt.parquet"
    pq.write_table(
        pa.table({"name": [SECRET + str(i) for i in range(5000)]}), p, compression="zstd"
    )
    data = bytearray(p.read_bytes())
    for i in range(200, 400):  # inside the first data page, footer intact
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))
    assert error_of(str(p)) == f"cannot read {p}: not a valid Parquet file"


def test_csv_mixed_encodings_flag_rows(tmp_path: Path) -> None:
    p = tmp_path / "mixed.csv"
    p.write_bytes(
        b"id,name,city\n"
        b"1,Jos\xc3\xa9,Paris\n"  # UTF-8
        b"2,Jos\xe9,Paris\n"  # latin-1 name
        b"3,Ana,K\xf6ln\n"  # latin-1 city
        b"4,Ana,Lyon\n"
    )
    rows = rows_of(str(p))
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["name"] == "José" and rows[0][REJECT_COLUMN] is None
    assert rows[1]["name"] == "Jos\ufffd"
    assert rows[1][REJECT_COLUMN] == "row 2: invalid UTF-8 in column 'name' (replaced with U+FFFD)"
    assert rows[2]["city"] == "K\ufffdln"
    assert rows[2][REJECT_COLUMN] == "row 3: invalid UTF-8 in column 'city' (replaced with U+FFFD)"
    assert rows[3][REJECT_COLUMN] is None


def test_csv_oversize_field_flagged(tmp_path: Path) -> None:
    from biomask.connectors.formats import MAX_FIELD_BYTES

    p = tmp_path / "big.csv"
    p.write_bytes(b"id,blob\n1,small\n2," + b"x" * (MAX_FIELD_BYTES + 1) + b"\n")
    rows = rows_of(str(p))
    assert rows[0][REJECT_COLUMN] is None
    assert rows[1][REJECT_COLUMN] == "row 2: field in column 'blob' is larger than 1 MiB"


def test_csv_ragged_rows(tmp_path: Path) -> None:
    p = tmp_path / "ragged.csv"
    p.write_text(f"id,name\n1,a\n2,{SECRET},extra\n3,c\n")
    assert error_of(str(p)) == f"cannot read {p}: line 3: expected 2 columns, found 3"
    q = tmp_path / "short.csv"
    q.write_text("id,name,age\n1,a,3\n2,b,4\n3\n")
    assert error_of(str(q)) == f"cannot read {q}: line 4: expected 3 columns, found 1"


def test_csv_type_change_after_first_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from biomask.connectors.formats import csv

    monkeypatch.setattr(csv, "CSV_BLOCK_SIZE", 64)
    p = tmp_path / "types.csv"
    p.write_text("id,n\n" + "".join(f"{i},{i}\n" for i in range(40)) + f"41,{SECRET}\n")
    msg = error_of(str(p))
    assert msg == (
        f"cannot read {p}: line 42: column 'n' does not fit the type int64 inferred from "
        f"the first rows of {p}"
    )


def test_jsonl_broken_line_becomes_flagged_null_row(tmp_path: Path) -> None:
    p = tmp_path / "broken.jsonl"
    p.write_bytes(
        b'{"id": 1, "name": "a"}\n'
        b"\n"
        b'{"id": 2, "name": "' + SECRET.encode() + b'"\n'  # truncated object
        b'{"id": 3, "name": "c"}\n'
        b"[1, 2]\n"  # valid JSON, not an object
        b'{"id": 5, "name": "Jos\xe9"}\n'  # latin-1
    )
    rows = rows_of(str(p))
    assert [r["id"] for r in rows] == [1, None, 3, None, 5]
    assert [r[REJECT_COLUMN] for r in rows] == [
        None,
        "line 3: invalid JSON",
        None,
        "line 5: invalid JSON",
        "line 6: invalid UTF-8 (replaced with U+FFFD)",
    ]
    assert rows[1]["name"] is None
    assert rows[4]["name"] == "Jos\ufffd"


def test_jsonl_type_change_names_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    lines = [f'{{"n": {i}}}' for i in range(10)] + [f'{{"n": "{SECRET}"}}']
    p.write_text("\n".join(lines) + "\n")
    src = open_source(str(p), batch_size=5)
    with pytest.raises(ConnectorError) as err:
        list(src.batches())
    assert str(err.value) == (
        f"cannot read {p}: line 11: field 'n' is string but was number in the first lines"
    )


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("parquet", "schema drift: column 'age' is string in {b} but int64 in {a}"),
        ("arrow", "schema drift: column 'age' is string in {b} but int64 in {a}"),
        ("csv", "schema drift: {b} has column 'nickname' that {a} lacks"),
        ("jsonl", "schema drift: {b}: line 1: field 'nickname' is not in the schema of {a}"),
    ],
)
def test_schema_drift_between_files(tmp_path: Path, fmt: str, expected: str) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    first = pa.table({"name": ["x"], "age": pa.array([30], pa.int64())})
    if fmt in ("parquet", "arrow"):
        second = pa.table({"name": ["y"], "age": [SECRET]})
    else:
        second = pa.table({"name": ["y", "z"], "nickname": [None, SECRET]})
    a, b = d / f"a.{fmt}", d / f"b.{fmt}"
    for path, table in ((a, first), (b, second)):
        sink = open_sink(str(path), table.schema)
        sink.write(table.to_batches()[0])
        sink.commit()
    if fmt == "csv":
        b.write_text(f"name,nickname\ny,z\nz,{SECRET}\n")
    assert error_of(str(d)) == expected.format(a=a, b=b)


def test_directory_mixing_formats(tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.csv").write_text("x\n1\n")
    pq.write_table(pa.table({"x": [1]}), d / "b.parquet")
    assert error_of(str(d)) == (
        f"input {d} mixes formats (a.csv and b.parquet); use one format per directory"
    )


def test_empty_directory(tmp_path: Path) -> None:
    assert error_of(str(tmp_path)) == (
        f"input {tmp_path} holds no .parquet, .csv, .jsonl or .arrow files"
    )


@pytest.mark.parametrize(
    "uri", ["s3://bucket/x.parquet", "mysql://u@h/db", "notes.txt", "data.xlsx"]
)
def test_unknown_uri(tmp_path: Path, uri: str) -> None:
    assert error_of(uri) == f"unsupported URI '{uri}': {UNSUPPORTED}"
    with pytest.raises(ConnectorError) as err:
        open_sink(uri, pa.schema([("a", pa.int64())]))
    assert str(err.value) == f"unsupported URI '{uri}': {UNSUPPORTED}"


def test_unknown_uri_hides_password() -> None:
    msg = error_of("mysql://u:hunter2@h/db")
    assert "hunter2" not in msg
    assert msg.startswith("unsupported URI 'mysql://u@h/db'")


@pytest.mark.parametrize(
    "name", ["missing.parquet", "missing.csv", "missing.jsonl", "missing.arrow", "missing-dir"]
)
def test_missing_input(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    assert error_of(str(p)) == f"input {p} not found"


def test_output_exists(tmp_path: Path) -> None:
    p = tmp_path / "out.parquet"
    p.write_bytes(b"precious")
    with pytest.raises(OutputExistsError) as err:
        open_sink(str(p), pa.schema([("a", pa.int64())]))
    assert str(err.value) == f"output {p} exists; pass --overwrite to replace it"
    assert p.read_bytes() == b"precious"


def test_not_an_arrow_file(tmp_path: Path) -> None:
    p = tmp_path / "x.arrow"
    p.write_bytes(b"not arrow at all")
    assert error_of(str(p)) == f"cannot read {p}: not a valid Arrow IPC file"


def test_jsonl_rows_conserved_when_no_line_parses(tmp_path: Path) -> None:
    p = tmp_path / "allbad.jsonl"
    p.write_text("nope\n{bad\n\n{}\n")
    rows = rows_of(str(p))
    assert rows == [
        {REJECT_COLUMN: "line 1: invalid JSON"},
        {REJECT_COLUMN: "line 2: invalid JSON"},
        {REJECT_COLUMN: None},
    ]
