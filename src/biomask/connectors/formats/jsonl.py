"""JSON Lines (``.jsonl``, ``.ndjson``, and ``-`` for stdin/stdout): one object a line.

Lines are read ``batch_size`` at a time and each chunk is parsed in one
``pyarrow.json.read_json`` call; the first chunk fixes the schema and later chunks (and
later files of a directory) are read against it. A line that is not a JSON object
becomes a row of nulls flagged ``line N: invalid JSON``; invalid UTF-8 is replaced with
U+FFFD and flagged. Dates stay dates and zoned timestamps keep their instant, in and out
(pyarrow alone reads every ISO string as a zone-less timestamp). Output is written by
polars' NDJSON writer; binary as base64, dates as ISO dates, zone-less timestamps as ISO
8601 with a ``T``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from biomask.connectors.base import REJECT_COLUMN
from biomask.connectors.batches import one_line
from biomask.connectors.formats._text import flag_text, text_safe
from biomask.errors import ConnectorError

__all__ = ["FORMAT", "JsonlFormat", "JsonlReader"]


class JsonlReader:
    """JSON Lines in chunks of ``batch_size`` lines, with broken lines flagged.

    Each chunk is parsed in one ``pyarrow.json.read_json`` call (fast path). If that
    fails, the chunk's lines are checked one by one: a line that is not a JSON object
    becomes a row of nulls flagged ``line N: invalid JSON``; invalid UTF-8 is replaced with
    U+FFFD and flagged. The first chunk fixes the schema; later chunks are read against it.
    """

    def __init__(
        self,
        stream: IO[bytes],
        label: str,
        batch_size: int,
        schema: pa.Schema | None = None,
        first: str | None = None,
    ) -> None:
        self.stream = stream
        self.label = label
        self.batch_size = batch_size
        self.line_no = 0
        self.first_label = first or label
        self._schema = schema  # without REJECT_COLUMN
        #: fields read as JSON strings and converted (dates, timestamps): pyarrow's JSON
        #: reader takes "1980-10-09" for a timestamp and drops a "+02:00" zone
        self._temporal: dict[str, pa.DataType] = {
            f.name: f.type
            for f in (schema or [])
            if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type)
        }
        self._pending: pa.RecordBatch | None = None
        if self._schema is None:
            start = stream.tell() if _seekable(stream) else None
            batch = self._next()
            self._pending = batch
            if self._schema is None:
                self._schema = pa.schema([])
            elif start is not None and any(pa.types.is_null(f.type) for f in self._schema):
                self._widen_nulls(start)

    @property
    def schema(self) -> pa.Schema:
        """The batches' columns: the data's, then :data:`REJECT_COLUMN`."""
        return self.data_schema.append(pa.field(REJECT_COLUMN, pa.string()))

    @property
    def data_schema(self) -> pa.Schema:
        """The data's columns, as the first chunk typed them."""
        assert self._schema is not None
        return self._schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            yield batch
        while (batch := self._next()) is not None:
            yield batch

    def _next(self) -> pa.RecordBatch | None:
        lines: list[bytes] = []
        numbers: list[int] = []
        try:
            for raw in islice(self.stream, self.batch_size):
                self.line_no += 1
                if raw.strip():
                    lines.append(raw.rstrip(b"\r\n"))
                    numbers.append(self.line_no)
        except OSError as exc:
            raise ConnectorError(f"cannot read {self.label}: {exc.strerror or exc}") from exc
        if not lines and self.line_no == 0:
            return None
        if not lines:
            # Only blank lines in this chunk: keep going unless the stream is exhausted.
            return self._next() if self._more() else None
        table = self._parse(lines)
        reasons: dict[int, str] = {}
        if table is None or not _valid_utf8(table):
            lines, reasons = self._repair(lines, numbers)
            table = self._parse(lines, strict=True, numbers=numbers)
        assert table is not None
        if self._schema is None:
            table = self._infer_temporal(lines, table)
            self._schema = table.schema
        elif self._temporal:
            table = self._convert(table, numbers, reasons)
        batch = _to_batch(table, self._schema)
        rows = len(lines) if batch.num_columns == 0 else None
        return flag_text(batch, 0, "line", numbers=numbers, reasons=reasons, num_rows=rows)

    def _infer_temporal(self, lines: list[bytes], table: pa.Table) -> pa.Table:
        """Dates stay dates, zoned timestamps keep their instant (as UTC), from the text.

        pyarrow infers every ISO date or timestamp string as a zone-less ``timestamp[s]``
        (a date comes back as ``1980-10-09 00:00:00``, ``12:00+02:00`` as ``10:00``
        without a zone). The first chunk's such fields are read again as strings and
        typed by what they hold: all ``YYYY-MM-DD`` -> ``date32``; all with a zone ->
        ``timestamp[us, tz=UTC]``; none with one -> ``timestamp[us]`` (``ns`` when a
        value has more than six fractional digits). A field mixing zoned and zone-less
        values stays a
        string rather than lose its zones. A string field whose values are all ISO
        timestamps (pyarrow leaves one text when a value has a fraction of a second, so
        biomask's own ``timestamp[us]`` output would not read back as one) is typed the
        same way.
        """
        for f in table.schema:
            if pa.types.is_string(f.type):
                texts = [v for v in table.column(f.name).to_pylist() if v is not None]
                if texts and all(_ISO_TIMESTAMP.match(v) for v in texts):
                    target = _temporal_type(table.column(f.name))
                    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        col = table.column(f.name).cast(target)
                        idx = table.schema.get_field_index(f.name)
                        table = table.set_column(idx, pa.field(f.name, target), col)
                        if not pa.types.is_string(target):
                            self._temporal[f.name] = target
        names = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
        names = [n for n in names if n not in self._temporal]
        if not names:
            return table
        buf = b"\n".join(lines) + b"\n"
        try:
            text = pajson.read_json(
                io.BytesIO(buf),
                read_options=pajson.ReadOptions(block_size=max(len(buf) + 1, 1 << 20)),
                parse_options=pajson.ParseOptions(
                    explicit_schema=pa.schema([pa.field(n, pa.string()) for n in names])
                ),
            )
        except pa.ArrowInvalid:
            return table  # the lines parsed as timestamps; keep what the reader made
        for name in names:
            values = text.column(name)
            target = _temporal_type(values)
            idx = table.schema.get_field_index(name)
            try:
                col = values.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            table = table.set_column(idx, pa.field(name, target), col)
            if not pa.types.is_string(target):
                self._temporal[name] = target
        return table

    def _convert(self, table: pa.Table, numbers: list[int], reasons: dict[int, str]) -> pa.Table:
        """Type the temporal fields of a later chunk (read as strings) like the first.

        A value that does not parse as the first lines' type makes its row a rejected row
        (null there, with the reason), as an invalid line does; the value is not shown.
        """
        for name, target in self._temporal.items():
            if name not in table.column_names:
                continue
            values = table.column(name)
            if not pa.types.is_string(values.type):
                continue
            try:
                col = values.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                out: list[Any] = []
                for i, v in enumerate(values.to_pylist()):
                    try:
                        out.append(None if v is None else pa.scalar(v).cast(target).as_py())
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        out.append(None)
                        reasons.setdefault(
                            i, f"line {numbers[i]}: field '{name}' is not {_kind(target)} "
                            "like in the first lines",
                        )  # fmt: skip
                col = pa.chunked_array([pa.array(out, target)])
            table = table.set_column(
                table.schema.get_field_index(name), pa.field(name, target), col
            )
        return table

    def _widen_nulls(self, start: int) -> None:
        """Give fields that were null in every first line the type of their first value.

        The first chunk fixes the schema, so a field that is null there would be typed
        ``null`` and a later value would stop the read. On a seekable file the reader scans
        ahead (at most :data:`_SCAN_BYTES`, keeping one chunk in memory) until every such
        field has a type, then starts over with the widened schema.
        """
        assert self._schema is not None
        types = {f.name: f.type for f in self._schema}
        after = self.stream.tell()  # where the first chunk ended: reading resumes here
        scanned = 0
        while any(pa.types.is_null(t) for t in types.values()) and scanned < _SCAN_BYTES:
            try:
                lines = [r.rstrip(b"\r\n") for r in islice(self.stream, self.batch_size)]
            except OSError:
                break
            if not lines:
                break
            scanned += sum(len(r) for r in lines)
            body = [r for r in lines if r.strip()]
            if not body:
                continue
            buf = b"\n".join(body) + b"\n"
            try:
                table = pajson.read_json(
                    io.BytesIO(buf),
                    read_options=pajson.ReadOptions(block_size=max(len(buf) + 1, 1 << 20)),
                )
            except pa.ArrowInvalid:
                continue  # broken lines are flagged when the chunk is read for real
            for field in table.schema:
                if field.name in types and pa.types.is_null(types[field.name]):
                    types[field.name] = field.type
        widened = pa.schema([pa.field(n, t) for n, t in types.items()])
        if widened.equals(self._schema):
            # nothing to widen: the first chunk stands, and the lines the scan read are
            # read again as the chunks after it (not skipped: rows in = rows out)
            self.stream.seek(after)
            return
        self._schema = widened
        self.stream.seek(start)
        self.line_no = 0
        self._pending = None

    def _more(self) -> bool:
        peek = getattr(self.stream, "peek", None)
        return bool(peek(1)) if peek is not None else False

    def _parse(
        self, lines: list[bytes], *, strict: bool = False, numbers: list[int] | None = None
    ) -> pa.Table | None:
        buf = b"\n".join(lines) + b"\n"
        opts = pajson.ReadOptions(block_size=max(len(buf) + 1, 1 << 20), use_threads=True)
        if self._schema is not None:
            read_as = pa.schema(
                [pa.field(f.name, pa.string()) if f.name in self._temporal else f
                 for f in self._schema]
            )  # fmt: skip
            parse = pajson.ParseOptions(explicit_schema=read_as, unexpected_field_behavior="error")
        else:
            parse = pajson.ParseOptions()
        try:
            return pajson.read_json(io.BytesIO(buf), read_options=opts, parse_options=parse)
        except pa.ArrowInvalid as exc:
            if not strict:
                return None
            text = str(exc)
            m = re.search(r"in row (\d+)", text)
            where = (
                f"line {numbers[int(m.group(1))]}"
                if m and numbers is not None and int(m.group(1)) < len(numbers)
                else f"lines {numbers[0]}-{numbers[-1]}"
                if numbers
                else "a line"
            )
            if "unexpected field" in text:
                found = _first_unexpected(lines, self._schema)
                if found is not None and numbers is not None:
                    where = f"line {numbers[found[0]]}"
                what = (
                    f"field '{found[1]}' is not in the schema of {self.first_label}"
                    if found
                    else "a field is not in the schema"
                )
                raise ConnectorError(f"schema drift: {self.label}: {where}: {what}") from exc
            m2 = re.search(r"Column\(/?([^)]*)\) changed from (\w+) to (\w+)", text)
            if m2:
                raise ConnectorError(
                    f"cannot read {self.label}: {where}: field '{m2.group(1)}' is "
                    f"{m2.group(3)} but was {m2.group(2)} in the first lines"
                ) from exc
            raise ConnectorError(f"cannot read {self.label}: {where}: {one_line(exc)}") from exc

    def _repair(self, lines: list[bytes], numbers: list[int]) -> tuple[list[bytes], dict[int, str]]:
        reasons: dict[int, str] = {}
        out: list[bytes] = []
        for i, raw in enumerate(lines):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                reasons[i] = f"line {numbers[i]}: invalid UTF-8 (replaced with U+FFFD)"
            try:
                ok = isinstance(json.loads(text), dict)
            except ValueError:
                ok = False
            if not ok:
                reasons[i] = f"line {numbers[i]}: invalid JSON"
                out.append(b"{}")
            else:
                out.append(text.encode("utf-8"))
        return out, reasons


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ZONE = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
_FRACTION = re.compile(r"\d{2}:\d{2}:\d{2}\.(\d+)")
#: an ISO timestamp, fraction and zone optional (pyarrow's JSON reader leaves a field of
#: them text when one has a fraction of a second)
_ISO_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?$"
)


def _temporal_type(values: pa.ChunkedArray) -> pa.DataType:
    """The type JSON strings of dates or timestamps are kept as (see ``_infer_temporal``)."""
    texts = [v for v in values.to_pylist() if v is not None]
    if texts and all(_ISO_DATE.match(v) for v in texts):
        return pa.date32()
    zoned = [bool(_ZONE.search(v)) for v in texts]
    digits = max((len(m.group(1)) for v in texts if (m := _FRACTION.search(v))), default=0)
    # microseconds unless a value has more digits: a later chunk may carry a fraction the
    # first lines did not, and it must fit the type the first lines fixed
    unit = "us" if digits <= 6 else "ns"
    if all(zoned) and texts:
        return pa.timestamp(unit, tz="UTC")
    if any(zoned):
        return pa.string()
    return pa.timestamp(unit)


def _kind(t: pa.DataType) -> str:
    if pa.types.is_date(t):
        return "an ISO date (YYYY-MM-DD)"
    if getattr(t, "tz", None):
        return "an ISO timestamp with a zone"
    return "an ISO timestamp without a zone"


def _first_unexpected(lines: list[bytes], schema: pa.Schema | None) -> tuple[int, str] | None:
    """(index, field) of the first line holding a field the schema lacks (drift report)."""
    known = set(schema.names) if schema is not None else set()
    for i, raw in enumerate(lines):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for k in obj:
                if k not in known:
                    return i, str(k)
    return None


def _valid_utf8(table: pa.Table) -> bool:
    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


#: how far a JSON Lines reader scans ahead for the type of a field null in the first lines
_SCAN_BYTES = 256 << 20


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _to_batch(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    if table.num_columns == 0 and len(schema) == 0:
        return pa.RecordBatch.from_pydict({}, schema=schema).slice(0, 0)
    if not table.schema.equals(schema):
        table = table.select(schema.names).cast(schema)
    table = table.combine_chunks()
    batches = table.to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=schema)
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def _open_bin(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _respell(name: str, col: pa.Array, typ: pa.DataType) -> tuple[pa.Array, pa.DataType]:
    if pa.types.is_date64(typ):
        return col.cast(pa.date32()), pa.date32()  # a date, not "1980-10-09 00:00:00"
    if pa.types.is_timestamp(typ) and typ.tz is None:
        # ISO 8601 ("T"; fractions as the unit has them); zoned ones get their offset
        return pc.strftime(col, format="%Y-%m-%dT%H:%M:%S"), pa.string()
    return col, typ


class _Reader:
    def __init__(self, files: Sequence[Path], batch_size: int) -> None:
        self.first = files[0]
        self.batch_size = batch_size
        with _open_bin(self.first) as fh:
            schema = JsonlReader(fh, str(self.first), batch_size).data_schema
        # a field named like the reject column does not get to fill it: the line check does
        self._schema = pa.schema([f for f in schema if f.name != REJECT_COLUMN])

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def batches(self, file: Path, *, first_row: int = 0) -> Iterator[pa.RecordBatch]:
        # the first file is read as it was opened (its first chunk fixes the types); the
        # others against that schema, so a drifting field names its file and line
        with _open_bin(file) as fh:
            yield from JsonlReader(
                fh,
                str(file),
                self.batch_size,
                schema=self._schema if file != self.first else None,
                first=str(self.first),
            )

    def columns(self, file: Path, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        for batch in self.batches(file):
            yield batch.select([n for n in names if n in batch.schema.names])

    def row_count(self) -> int | None:
        return None  # counting lines means reading the whole file


class _Writer:
    def __init__(self, fh: IO[bytes], schema: pa.Schema) -> None:
        self.fh = fh

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            import polars as pl

            frame = cast(Any, pl.from_arrow(text_safe(batch, _respell)))
            self.fh.write(frame.write_ndjson().encode("utf-8"))

    def close(self) -> None:
        pass  # nothing buffered: every batch went out as it came


class JsonlFormat:
    """JSON Lines (``.jsonl``, ``.ndjson``); broken lines are flagged, not fatal."""

    name = "jsonl"
    suffixes: tuple[str, ...] = (".jsonl", ".ndjson")
    flags_rows = True
    coalesce = True
    projects = False

    def open_dataset(self, files: Sequence[Path], batch_size: int) -> _Reader:
        return _Reader(files, batch_size)

    def open_writer(self, fh: IO[bytes], schema: pa.Schema) -> _Writer:
        return _Writer(fh, schema)


FORMAT = JsonlFormat()
