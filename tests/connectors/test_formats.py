"""The file-format registry, atomic staging and dataset listing, each on its own."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import biomask.connectors.formats as formats
from biomask.connectors import REJECT_COLUMN, open_sink, open_source
from biomask.connectors.atomic import StagedDir, StagedFile
from biomask.connectors.files import FileSink
from biomask.connectors.formats import (
    detect_format,
    format_of,
    get_format,
    register,
    suffix_list,
)
from biomask.connectors.listing import (
    list_data_files,
    partition_path,
    partition_type,
    partition_values,
    table_entries,
)
from biomask.errors import ConnectorError, OutputExistsError

from .conftest import enrolment_table

# --------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------


def test_builtin_formats_and_their_suffixes() -> None:
    assert [f.name for f in formats.formats()] == ["parquet", "csv", "jsonl", "arrow"]
    assert suffix_list() == ".parquet, .csv, .jsonl or .arrow"
    assert {s: detect_format(f"x{s}") for s in (".PQ", ".ndjson", ".feather", ".ipc")} == {
        ".PQ": "parquet",
        ".ndjson": "jsonl",
        ".feather": "arrow",
        ".ipc": "arrow",
    }
    assert detect_format("x.xlsx") is None and format_of("noext") is None
    assert get_format("csv") is format_of("a.csv")


def test_unknown_format_names_what_exists(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError) as err:
        get_format("xlsx")
    assert str(err.value) == "unknown file format 'xlsx' (known: parquet, csv, jsonl, arrow)"
    (tmp_path / "t.xlsx").write_bytes(b"PK")
    with pytest.raises(ConnectorError) as err:
        open_source(str(tmp_path / "t.xlsx"))
    assert str(err.value) == (
        f"unsupported URI '{tmp_path / 't.xlsx'}': use a path ending in .parquet, .csv, "
        ".jsonl or .arrow, a directory of them, '-' for JSON Lines on stdin/stdout, or "
        "postgresql://..."
    )
    with pytest.raises(ConnectorError, match=r"^unsupported output .*t\.xlsx$"):
        FileSink(tmp_path / "t.xlsx", pa.schema([("a", pa.int64())]))
    assert not list(tmp_path.glob(".t.xlsx*"))


def test_register_refuses_a_taken_name_or_suffix() -> None:
    class Clash:
        name = "csv"
        suffixes: tuple[str, ...] = (".tsv",)

    with pytest.raises(ValueError, match="file format 'csv' is already registered"):
        register(Clash())  # type: ignore[arg-type]
    Clash.name, Clash.suffixes = "mycsv", (".tsv", ".csv")
    with pytest.raises(ValueError, match=r"suffix '\.csv' already belongs to file format 'csv'"):
        register(Clash())  # type: ignore[arg-type]
    assert detect_format("a.tsv") is None  # nothing half-registered


@pytest.mark.parametrize("fmt", [f.name for f in formats.formats()])
def test_each_format_round_trips_through_its_own_reader_and_writer(
    tmp_path: Path, fmt: str
) -> None:
    """Writer then reader of one format, with no source or sink around them: the rows,
    the column types each format keeps, and the reject column only where it flags."""
    f = get_format(fmt)
    table = enrolment_table(300)
    files = []
    for i, part in enumerate([table.slice(0, 170), table.slice(170)]):
        path = tmp_path / f"part-{i}{f.suffixes[0]}"
        with open(path, "wb") as fh:
            w = f.open_writer(fh, table.schema)
            for b in part.to_batches(max_chunksize=64):
                w.write(b)
            w.close()
        files.append(path)
    reader = f.open_dataset(files, 100)
    assert REJECT_COLUMN not in reader.schema.names
    assert reader.schema.names == table.column_names
    got = [b for p in files for b in reader.batches(p)]
    assert all((REJECT_COLUMN in b.schema.names) == f.flags_rows for b in got)
    back = pa.Table.from_batches(got).drop_columns([REJECT_COLUMN] if f.flags_rows else [])
    assert back.cast(table.schema).equals(table)
    assert reader.row_count() in (None, 300)
    cols = pa.Table.from_batches(
        [b for p in files for b in reader.columns(p, ["age", "subject_id"])]
    )
    assert cols.column_names == ["age", "subject_id"] and cols.num_rows == 300


class _Tsv:
    """A format the tests add: tab-separated text, to show a format is one object."""

    name = "tsv"
    suffixes: tuple[str, ...] = (".tsv",)
    flags_rows = False
    coalesce = True
    projects = False

    def open_dataset(self, files: Sequence[Path], batch_size: int) -> _TsvReader:
        return _TsvReader(files)

    def open_writer(self, fh: IO[bytes], schema: pa.Schema) -> pacsv.CSVWriter:
        return pacsv.CSVWriter(fh, schema, write_options=pacsv.WriteOptions(delimiter="\t"))


class _TsvReader:
    def __init__(self, files: Sequence[Path]) -> None:
        self.schema = self._read(files[0]).schema

    @staticmethod
    def _read(file: Path) -> pa.Table:
        return pacsv.read_csv(file, parse_options=pacsv.ParseOptions(delimiter="\t"))

    def batches(self, file: Path, *, first_row: int = 0) -> Iterator[pa.RecordBatch]:
        yield from self._read(file).to_batches()

    def columns(self, file: Path, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        yield from self._read(file).select(list(names)).to_batches()

    def row_count(self) -> int | None:
        return None


def test_a_registered_format_works_everywhere_a_suffix_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_source, open_sink, directories and multi-table exports pick it up with no
    other change: nothing outside the format branches on a format's name."""
    monkeypatch.setattr(formats, "_BY_NAME", dict(formats._BY_NAME))
    monkeypatch.setattr(formats, "_BY_SUFFIX", dict(formats._BY_SUFFIX))
    register(_Tsv())
    assert suffix_list() == ".parquet, .csv, .jsonl, .arrow or .tsv"
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    (tmp_path / "export").mkdir()
    sink = open_sink(str(tmp_path / "export" / "people.tsv"), table.schema)
    sink.write(table.to_batches()[0])
    sink.commit()
    assert (tmp_path / "export" / "people.tsv").read_text() == (
        '"id"\t"name"\n1\t"a"\n2\t"b"\n3\t"c"\n'
    )
    src = open_source(str(tmp_path / "export"))
    assert src.format == "tsv"  # type: ignore[attr-defined]
    assert pa.Table.from_batches(list(src.batches())).equals(table)
    assert list(table_entries(tmp_path / "export")) == ["people"]


# --------------------------------------------------------------------------------------
# atomic staging
# --------------------------------------------------------------------------------------


def test_staged_file_is_invisible_until_commit(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.bin"
    staged = StagedFile(final)
    assert staged.file is not None
    staged.file.write(b"abc")
    assert staged.path.parent == final.parent and staged.path.name.startswith(".out.bin.tmp-")
    assert not final.exists()
    staged.commit()
    assert final.read_bytes() == b"abc" and not staged.path.exists()
    staged.commit()  # twice is harmless
    with pytest.raises(OutputExistsError) as err:
        StagedFile(final)
    assert str(err.value) == f"output {final} exists; pass --overwrite to replace it"
    again = StagedFile(final, overwrite=True)
    assert again.file is not None
    again.file.write(b"new")
    again.abort()
    assert final.read_bytes() == b"abc" and not again.path.exists()
    with pytest.raises(ConnectorError, match="the sink was aborted"):
        again.commit()
    with pytest.raises(ConnectorError) as err2:
        StagedFile(final, overwrite=True, append=True)
    assert str(err2.value) == (
        f"cannot append to {final}: appending is supported for postgresql outputs only"
    )


def test_staged_dir_replaces_a_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "out"
    first = StagedDir(final)
    (first.path / "a").mkdir()
    (first.path / "a" / "x").write_bytes(b"1")
    first.commit()
    second = StagedDir(final, overwrite=True)
    (second.path / "y").write_bytes(b"2")
    assert (final / "a" / "x").exists()  # the old output stays until commit
    second.commit()
    assert sorted(p.name for p in final.rglob("*")) == ["y"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left aside


def test_a_dead_writers_temporary_is_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".out.parquet.tmp-{dead.stdout.strip()}-0000"
    stale.write_bytes(b"half")
    live = tmp_path / f".out.parquet.tmp-{os.getpid()}-0000"
    live.write_bytes(b"mine")
    staged = StagedFile(tmp_path / "out.parquet")
    assert not stale.exists() and live.exists()
    staged.abort()


# --------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------


def test_listing_skips_hidden_and_sorts_by_relative_path(tmp_path: Path) -> None:
    for rel in ["b/part-1.parquet", "a/part-9.parquet", "a/_SUCCESS", ".tmp/x.parquet",
                "_meta/y.parquet", "a/notes.txt", "a/part-10.parquet"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_data_files(tmp_path)]
    assert got == ["a/part-10.parquet", "a/part-9.parquet", "b/part-1.parquet"]


def test_hive_segments_round_trip(tmp_path: Path) -> None:
    row = {"year": 2024, "site": "rome nord/2", "tag": None}
    rel = partition_path(["year", "site", "tag"], row)
    assert rel == "year=2024/site=rome%20nord%2F2/tag=__HIVE_DEFAULT_PARTITION__"
    file = tmp_path / rel / "part-0.parquet"
    assert partition_values(tmp_path, file) == {"year": "2024", "site": "rome nord/2", "tag": None}
    assert partition_type(["1", None, "-7"]) == pa.int32()
    assert partition_type(["1", str(2**31)]) == pa.int64()
    assert partition_type(["1", "x"]) == pa.string()


def test_table_entries_lists_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "subjects.csv").write_text("a\n1\n")
    (tmp_path / "subjects.parquet").write_bytes(b"")
    (tmp_path / "captures").mkdir()
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / "readme.md").write_text("")
    got = {k: sorted(p.name for p in v) for k, v in table_entries(tmp_path).items()}
    assert got == {"captures": ["captures"], "subjects": ["subjects.csv", "subjects.parquet"]}
    with pytest.raises(ConnectorError, match=r"^cannot read .*nope: "):
        table_entries(tmp_path / "nope")


def test_jsonl_writer_streams_to_any_binary_handle() -> None:
    """stdout is a handle like a file: the JSON Lines writer needs nothing else."""
    buf = io.BytesIO()
    w = get_format("jsonl").open_writer(buf, pa.schema([("a", pa.binary())]))
    w.write(pa.record_batch({"a": [b"\x00\xff", None]}))
    w.close()
    assert buf.getvalue() == b'{"a":"AP8="}\n{"a":null}\n'
