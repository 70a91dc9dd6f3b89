"""CSV: read block by block with fixed column types, written with a header row.

Types are inferred from the first block (``CSV_BLOCK_SIZE``) with pyarrow, with two
corrections that matter for identity data: an integer column where a value has a leading
zero stays text, and only an *unquoted empty* field is null. Later files of a directory
are read with the first file's types; a value that does not fit names the file, line and
column, never the value. Rows with invalid UTF-8 or an oversized field are flagged in the
reject column (see :mod:`biomask.connectors.formats._text`). Binary columns are written as
base64; nested columns cannot be written (the error names the column).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from biomask.connectors.base import REJECT_COLUMN
from biomask.connectors.batches import one_line
from biomask.connectors.formats._text import flag_text, text_safe
from biomask.connectors.formats.base import schema_drift
from biomask.errors import ConnectorError

__all__ = ["CSV_BLOCK_SIZE", "FORMAT", "CsvFormat"]

#: CSV block size: bounds memory per block and is the largest row the reader accepts.
CSV_BLOCK_SIZE = 8 << 20


def _csv_options() -> tuple[pacsv.ReadOptions, pacsv.ConvertOptions]:
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE, use_threads=False)
    # Only an unquoted empty field is null: "NA" is Namibia and "null" may be a surname,
    # so pyarrow's default null spellings would silently destroy data.
    conv = pacsv.ConvertOptions(
        check_utf8=False,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return read, conv


def _csv_infer(path: Path) -> pa.Schema:
    """Column types for a CSV file from its first block.

    pyarrow's inference is used with two corrections that matter for identity data:
    integers written with a leading zero (``007``, phone numbers, document numbers) stay
    strings, and a column that is empty in the first block is a string, not ``null``.
    """
    read, conv = _csv_options()
    parse = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip", newlines_in_values=True)
    try:
        with pacsv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=conv
        ) as reader:
            inferred = reader.schema
        names = inferred.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConnectorError(f"cannot read {path}: column '{dupes[0]}' appears twice")
        ints = [f.name for f in inferred if pa.types.is_integer(f.type)]
        leading_zero: set[str] = set()
        if ints:
            conv2 = pacsv.ConvertOptions(
                check_utf8=False,
                column_types=dict.fromkeys(ints, pa.string()),
                include_columns=ints,
            )
            with pacsv.open_csv(
                path, read_options=read, parse_options=parse, convert_options=conv2
            ) as reader:
                try:
                    first = reader.read_next_batch()
                except StopIteration:
                    first = None
            if first is not None:
                for n in ints:
                    if pc.any(pc.match_substring_regex(first.column(n), r"^[+-]?0\d")).as_py():
                        leading_zero.add(n)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return pa.schema([])
        raise ConnectorError(f"cannot read {path}: {one_line(exc)}") from exc
    except OSError as exc:
        raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    fields = []
    for f in inferred:
        if pa.types.is_null(f.type) or f.name in leading_zero:
            fields.append(pa.field(f.name, pa.string()))
        else:
            fields.append(f)
    return pa.schema(fields)


_CSV_CONV_ERR = re.compile(r"In CSV column #(\d+): Row #(\d+): CSV conversion error to ([^:]+)")


def _iter_csv(
    path: Path, schema: pa.Schema, first: Path, rows_before: int
) -> Iterator[pa.RecordBatch]:
    """Stream one CSV file with fixed column types, flagging untrusted rows.

    ``rows_before`` is the number of data rows already read (across the files of a
    directory), so reasons can name a row.
    """
    read, conv = _csv_options()
    conv.column_types = {f.name: f.type for f in schema}
    bad_rows: list[tuple[int | None, int, int]] = []

    def on_invalid(row: Any) -> str:
        bad_rows.append((row.number, row.expected_columns, row.actual_columns))
        return "skip"

    # In a one-column file an empty line is a null value, not a blank line to skip
    # (that is how the CSV writer spells it); with more columns it is skipped.
    parse = pacsv.ParseOptions(
        invalid_row_handler=on_invalid, newlines_in_values=True, ignore_empty_lines=len(schema) != 1
    )
    try:
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=conv)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            if len(schema):
                raise ConnectorError(f"cannot read {path}: the file is empty (no header)") from exc
            return
        raise ConnectorError(f"cannot read {path}: {one_line(exc)}") from exc
    except OSError as exc:
        raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with reader:
        if reader.schema.names != schema.names:
            problem = schema_drift(schema, reader.schema, path, first) or "schema drift"
            raise ConnectorError(problem.split(" (")[0])
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                m = _CSV_CONV_ERR.search(str(exc))
                if m:
                    col = schema.names[int(m.group(1))]
                    raise ConnectorError(
                        f"cannot read {path}: line {m.group(2)}: column '{col}' does not fit "
                        f"the type {m.group(3)} inferred from the first rows of {first}"
                    ) from exc
                if "straddling" in str(exc):
                    raise ConnectorError(
                        f"cannot read {path}: a row is larger than {CSV_BLOCK_SIZE >> 20} MiB "
                        "(or a quote is not closed)"
                    ) from exc
                raise ConnectorError(f"cannot read {path}: {one_line(exc)}") from exc
            if bad_rows:
                line, exp, got = bad_rows[0]
                where = f"line {line}" if line is not None else "a row"
                raise ConnectorError(
                    f"cannot read {path}: {where}: expected {exp} columns, found {got}"
                )
            yield flag_text(batch, rows_before, "row")
            rows_before += batch.num_rows


def _respell(name: str, col: pa.Array, typ: pa.DataType) -> tuple[pa.Array, pa.DataType]:
    if pa.types.is_nested(typ):
        raise ConnectorError(
            f"column '{name}' has type {typ}, which CSV cannot hold; write "
            "Parquet, Arrow or JSON Lines instead"
        )
    return col, typ


def _without_reject(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != REJECT_COLUMN], metadata=schema.metadata)


class _Reader:
    def __init__(self, files: Sequence[Path]) -> None:
        self.first = files[0]
        # a header naming the reject column does not get to fill it: the row check does
        self._schema = _without_reject(_csv_infer(self.first))

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def batches(self, file: Path, *, first_row: int = 0) -> Iterator[pa.RecordBatch]:
        return _iter_csv(file, self._schema, self.first, first_row)

    def columns(self, file: Path, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        for batch in self.batches(file):
            yield batch.select([n for n in names if n in batch.schema.names])

    def row_count(self) -> int | None:
        return None  # counting rows means parsing the whole file


class _Writer:
    def __init__(self, fh: IO[bytes], schema: pa.Schema) -> None:
        empty = text_safe(pa.RecordBatch.from_pylist([], schema=schema), _respell)
        self._w: pacsv.CSVWriter | None = pacsv.CSVWriter(fh, empty.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        assert self._w is not None, "write after close"
        self._w.write_batch(text_safe(batch, _respell))

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class CsvFormat:
    """CSV with a header row (``.csv``); rows it cannot trust are flagged, not fatal."""

    name = "csv"
    suffixes: tuple[str, ...] = (".csv",)
    flags_rows = True
    coalesce = True
    projects = False

    def open_dataset(self, files: Sequence[Path], batch_size: int) -> _Reader:
        return _Reader(files)

    def open_writer(self, fh: IO[bytes], schema: pa.Schema) -> _Writer:
        return _Writer(fh, schema)


FORMAT = CsvFormat()
