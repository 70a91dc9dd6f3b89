"""File sources and sinks: Parquet, CSV, JSON Lines and Arrow IPC, one file or a directory.

Why this module looks the way it does:

* **Bounded memory.** Every reader streams: Parquet row group by row group
  (``ParquetFile.iter_batches``), Arrow IPC batch by batch from a memory map, CSV block by
  block (``pyarrow.csv.open_csv``), JSON Lines ``batch_size`` lines at a time. Batches are
  re-chunked to at most ``batch_size`` rows.
* **Nothing half-written.** A sink writes ``.<name>.tmp-<pid>-<random>`` beside the final
  name, fsyncs it and renames it into place on :meth:`commit`; :meth:`abort` (or a killed
  process) leaves nothing under the final name. Temporary files of dead writers are swept
  the next time the same output is opened.
* **Deterministic bytes.** Fixed writer settings and no timestamps: the same batches give
  byte-identical files, so a re-run can be verified by hash.
* **Untrusted text is flagged, not fatal.** Invalid UTF-8 in a CSV/JSONL field is decoded
  with U+FFFD and the row is flagged in :data:`REJECT_COLUMN` so the masker quarantines
  it; a run does not die on one bad byte, and the bad row is never passed through silently.
* **Errors are one line** naming the file, line and column, never a value.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from biomask.connectors.base import REJECT_COLUMN, DatasetRef
from biomask.errors import ConnectorError, OutputExistsError

__all__ = [
    "FORMATS",
    "MAX_FIELD_BYTES",
    "FileSink",
    "FileSource",
    "ParquetDirSink",
    "StdinJsonlSource",
    "StdoutJsonlSink",
    "detect_format",
    "list_data_files",
    "rechunk",
]

#: File suffix -> format name.
FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}

#: A text field larger than this is flagged (REJECT_COLUMN) rather than trusted: no
#: enrolment field is legitimately this large, and the masker should not spend time on it.
MAX_FIELD_BYTES = 1 << 20

#: CSV block size: bounds memory per block and is the largest row the reader accepts.
CSV_BLOCK_SIZE = 8 << 20

#: Rows per file before a directory sink starts the next ``part-N.parquet``.
ROWS_PER_FILE = 1 << 22

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_PARQUET_OPTS: dict[str, Any] = {
    # Fixed settings: same batches -> same bytes on every run.
    "compression": "zstd",
    "version": "2.6",
    "data_page_version": "1.0",
    "use_dictionary": True,
    # Tokens of a high-cardinality column (ids, passports, e-mails) have no repeats to
    # share: a 64 KiB dictionary page makes such a column fall back to plain encoding after
    # a few thousand values instead of hashing a whole batch first (100k-row bench output:
    # 105 -> 83 ms to write, and 9% smaller), while low-cardinality columns (nationality,
    # device, city) still fit their dictionaries.
    "dictionary_pagesize_limit": 1 << 18,
    "write_statistics": True,
    "store_schema": True,
    "write_page_index": False,
}


def parquet_options(
    schema: pa.Schema, sample: pa.RecordBatch | pa.Table | None = None
) -> dict[str, Any]:
    """Parquet writer settings for ``schema``, fitted to the columns' contents.

    - Ciphertext columns are stored as they are. AES-GCM output is random bytes, so zstd
      and dictionary encoding only spend time on it (200k 2 KiB templates: 0.52 s to write
      with them, 0.31 s without), and min/max statistics of ciphertexts would put 2 KiB of
      noise per row group in the footer. They are the columns the ``encrypt`` operator
      names in the schema metadata (``biomask.encrypt.<column>.type``).
    - Given a ``sample`` (the first batch), string and binary columns where most sampled
      values differ (ids, tokens, e-mails: what masking outputs) get no dictionary and no
      min/max statistics: a dictionary of distinct tokens saves nothing and the writer
      would hash every value before falling back, and the min/max of random tokens prune
      nothing. Low-cardinality columns keep both. On the 100k-row structured bench this
      writes in 65 ms instead of 79 ms, into a smaller file. The choice depends only on
      the first batch, so the same input still gives the same bytes.

    Every other setting is fixed (:data:`_PARQUET_OPTS`).
    """
    opts = dict(_PARQUET_OPTS)
    meta = schema.metadata or {}
    head, tail = b"biomask.encrypt.", b".type"
    sealed = {
        k[len(head) : -len(tail)].decode("utf-8", "replace")
        for k in meta
        if k.startswith(head) and k.endswith(tail)
    } & set(schema.names)
    busy = _distinct_columns(schema, sample) - sealed
    if not sealed and not busy:
        return opts
    leaves = {f.name: _leaf_paths(f) for f in schema}
    plain = [p for name, paths in leaves.items() if name not in sealed | busy for p in paths]
    if sealed:
        opts["compression"] = {
            p: ("none" if name in sealed else _PARQUET_OPTS["compression"])
            for name, paths in leaves.items()
            for p in paths
        }
    opts["use_dictionary"] = plain
    opts["write_statistics"] = plain
    return opts


def _distinct_columns(schema: pa.Schema, sample: pa.RecordBatch | pa.Table | None) -> set[str]:
    """String/binary columns of which over half the sampled values are distinct."""
    if sample is None or sample.num_rows == 0:
        return set()
    head = sample.slice(0, 4096)
    out = set()
    for f in schema:
        t = f.type
        if f.name not in head.schema.names or not (
            pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
        ):
            continue
        col = head.column(f.name)
        valid = len(col) - col.null_count
        if valid >= 64 and pc.count_distinct(col).as_py() * 2 > valid:
            out.add(f.name)
    return out


def _leaf_paths(field: pa.Field) -> list[str]:
    """The Parquet column paths of one Arrow field, as pyarrow itself names them."""
    if not pa.types.is_nested(field.type):
        return [field.name]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.schema([field]).empty_table(), buf)
    meta = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return [meta.column(i).path for i in range(len(meta))]


def detect_format(path: str | Path) -> str | None:
    """Format name for a file path from its suffix, or None when the suffix is unknown."""
    return FORMATS.get(Path(path).suffix.lower())


def _hidden(name: str) -> bool:
    # Spark/pyarrow convention: _SUCCESS, _metadata, .tmp files are not data.
    return name.startswith((".", "_"))


def list_data_files(root: Path) -> list[Path]:
    """Data files under ``root`` in a stable (sorted) order, skipping hidden names.

    Sorting by relative path makes the read order, and so the output, deterministic.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for f in filenames:
            if not _hidden(f) and detect_format(f) is not None:
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def rechunk(
    batches: Iterable[pa.RecordBatch], batch_size: int, *, coalesce: bool = False
) -> Iterator[pa.RecordBatch]:
    """Yield batches of at most ``batch_size`` rows.

    Large batches are sliced (zero-copy). With ``coalesce``, small batches are also joined
    up to ``batch_size`` rows, so a reader that produces many tiny batches (a CSV block of
    wide rows, a database driver) does not make every downstream step pay per-batch cost.
    """
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            room = batch_size - pending_rows if coalesce else batch_size
            piece = batch.slice(start, room)
            start += piece.num_rows
            if not coalesce:
                yield piece
                continue
            pending.append(piece)
            pending_rows += piece.num_rows
            if pending_rows >= batch_size:
                yield _concat(pending)
                pending, pending_rows = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def _one_line(exc: BaseException) -> str:
    """First line of an Arrow error with quoted fragments removed (they may hold values)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r'"[^"]*"', '"…"', text)


# --------------------------------------------------------------------------------------
# schema drift
# --------------------------------------------------------------------------------------


def _drift(expected: pa.Schema, got: pa.Schema, file: Path, first: Path) -> str | None:
    """One-line description of how ``got`` differs from ``expected``, or None."""
    exp = {f.name: f.type for f in expected}
    have = {f.name: f.type for f in got}
    for name, typ in have.items():
        if name not in exp:
            return f"schema drift: {file} has column '{name}' that {first} lacks"
        if not typ.equals(exp[name]):
            return f"schema drift: column '{name}' is {typ} in {file} but {exp[name]} in {first}"
    for name in exp:
        if name not in have:
            return f"schema drift: {file} lacks column '{name}' that {first} has"
    if list(have) != list(exp):
        return f"schema drift: {file} has the columns of {first} in a different order"
    return None


# --------------------------------------------------------------------------------------
# hive partitions
# --------------------------------------------------------------------------------------


def _partition_values(root: Path, file: Path) -> dict[str, str | None]:
    parts: dict[str, str | None] = {}
    for seg in file.relative_to(root).parts[:-1]:
        if "=" in seg:
            key, _, raw = seg.partition("=")
            value = unquote(raw)
            parts[key] = None if value == _HIVE_NULL else value
    return parts


def _partition_type(values: Iterable[str | None]) -> pa.DataType:
    # Same inference as pyarrow's hive discovery: int32 when every value is an int32,
    # int64 for larger ints, string otherwise.
    vals = [v for v in values if v is not None]
    if vals and all(re.fullmatch(r"-?\d+", v) for v in vals):
        return pa.int32() if all(-(2**31) <= int(v) < 2**31 for v in vals) else pa.int64()
    return pa.string()


# --------------------------------------------------------------------------------------
# per-format readers
# --------------------------------------------------------------------------------------


def _parquet_schema(path: Path) -> pa.Schema:
    try:
        return pq.ParquetFile(path).schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise ConnectorError(f"cannot read {path}: not a valid Parquet file") from exc


def _iter_parquet(
    path: Path, batch_size: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    try:
        # pre_buffer=True (pyarrow's default) caches every column chunk it has read until
        # the file is closed, so memory grows with the file; stream without it.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        if columns is not None:
            columns = [c for c in columns if c in pf.schema_arrow.names]
        yield from pf.iter_batches(batch_size=batch_size, use_threads=True, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise ConnectorError(f"cannot read {path}: not a valid Parquet file") from exc


def _open_ipc(path: Path) -> tuple[pa.Schema, Callable[[], Iterator[pa.RecordBatch]]]:
    def bad(exc: BaseException) -> ConnectorError:
        return ConnectorError(f"cannot read {path}: not a valid Arrow IPC file")

    try:
        source = pa.memory_map(str(path), "r")
        try:
            reader = ipc.open_file(source)

            def file_batches() -> Iterator[pa.RecordBatch]:
                try:
                    for i in range(reader.num_record_batches):
                        yield reader.get_batch(i)
                except (pa.ArrowException, OSError) as exc:
                    raise bad(exc) from exc

            return reader.schema, file_batches
        except pa.ArrowInvalid:
            source.seek(0)
            stream = ipc.open_stream(source)

            def stream_batches() -> Iterator[pa.RecordBatch]:
                try:
                    yield from stream
                except (pa.ArrowException, OSError) as exc:
                    raise bad(exc) from exc

            return stream.schema, stream_batches
    except (pa.ArrowException, OSError) as exc:
        raise bad(exc) from exc


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
        raise ConnectorError(f"cannot read {path}: {_one_line(exc)}") from exc
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
    path: Path, schema: pa.Schema, first: Path, rows_before: list[int]
) -> Iterator[pa.RecordBatch]:
    """Stream one CSV file with fixed column types, flagging untrusted rows.

    ``rows_before`` is a one-element counter of data rows already read (across the files
    of a directory), so reasons can name a row.
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
        raise ConnectorError(f"cannot read {path}: {_one_line(exc)}") from exc
    except OSError as exc:
        raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with reader:
        if reader.schema.names != schema.names:
            problem = _drift(schema, reader.schema, path, first) or "schema drift"
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
                raise ConnectorError(f"cannot read {path}: {_one_line(exc)}") from exc
            if bad_rows:
                line, exp, got = bad_rows[0]
                where = f"line {line}" if line is not None else "a row"
                raise ConnectorError(
                    f"cannot read {path}: {where}: expected {exp} columns, found {got}"
                )
            yield _flag_text(batch, rows_before[0], "row")
            rows_before[0] += batch.num_rows


def _flag_text(
    batch: pa.RecordBatch,
    offset: int,
    unit: str,
    numbers: Sequence[int] | None = None,
    reasons: dict[int, str] | None = None,
    num_rows: int | None = None,
) -> pa.RecordBatch:
    """Validate text columns; replace invalid UTF-8 with U+FFFD; add :data:`REJECT_COLUMN`.

    The fast path is one validation pass per string column. Only a column that fails
    validation is decoded value by value, which is rare and bounded by the batch.
    """
    reasons = dict(reasons or {})
    arrays = list(batch.columns)
    # A batch with no columns (JSON lines that were all broken or ``{}``) cannot carry a
    # row count itself; the caller passes it so those rows are not lost.
    n = batch.num_rows if num_rows is None else num_rows

    def label(i: int) -> str:
        return f"{unit} {numbers[i] if numbers is not None else offset + i + 1}"

    for j, field in enumerate(batch.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = arrays[j]
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            raw = col.view(pa.binary() if pa.types.is_string(field.type) else pa.large_binary())
            fixed: list[str | None] = []
            for i, v in enumerate(raw.to_pylist()):
                if v is None:
                    fixed.append(None)
                    continue
                try:
                    fixed.append(v.decode("utf-8"))
                except UnicodeDecodeError:
                    fixed.append(v.decode("utf-8", errors="replace"))
                    reasons.setdefault(
                        i,
                        f"{label(i)}: invalid UTF-8 in column '{field.name}' "
                        "(replaced with U+FFFD)",
                    )
            col = pa.array(fixed, type=field.type)
            arrays[j] = col
        too_big = pc.greater(pc.binary_length(col), MAX_FIELD_BYTES)
        if pc.any(too_big).as_py():
            for i in pc.indices_nonzero(pc.fill_null(too_big, False)).to_pylist():
                reasons.setdefault(
                    i,
                    f"{label(i)}: field in column '{field.name}' is larger than "
                    f"{MAX_FIELD_BYTES >> 20} MiB",
                )
    if reasons:
        reject = pa.array([reasons.get(i) for i in range(n)], pa.string())
    else:
        reject = pa.nulls(n, pa.string())
    return pa.RecordBatch.from_arrays(
        [*arrays, reject], schema=batch.schema.append(pa.field(REJECT_COLUMN, pa.string()))
    )


class _JsonlReader:
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
        assert self._schema is not None
        return self._schema.append(pa.field(REJECT_COLUMN, pa.string()))

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
        return _flag_text(batch, 0, "line", numbers=numbers, reasons=reasons, num_rows=rows)

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
            raise ConnectorError(f"cannot read {self.label}: {where}: {_one_line(exc)}") from exc

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


# --------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------


class FileSource:
    """One data file, or a directory of data files of one format (optionally hive-partitioned).

    Parameters
    ----------
    path:
        The file or directory.
    batch_size:
        Largest batch yielded.
    uri:
        The URI as the user gave it (for lineage).

    Notes
    -----
    For Parquet and Arrow IPC every file's schema is read up front (footers only), so
    schema drift fails the run before anything is written. CSV and JSON Lines files after
    the first are read with the first file's column types, and a mismatch names the file.
    Hive partition columns (``year=2024/``) are appended after the file columns, as
    pyarrow does, and listed in :attr:`partition_by` so the output can keep them.
    """

    def __init__(
        self,
        path: Path,
        *,
        batch_size: int = 65_536,
        uri: str | None = None,
        table: str | None = None,
    ) -> None:
        self.path = path
        self.uri = uri or str(path)
        self.batch_size = batch_size
        self.table = table
        if path.is_dir():
            self.root: Path | None = path
            self.files = list_data_files(path)
            if not self.files:
                raise ConnectorError(
                    f"input {path} holds no .parquet, .csv, .jsonl or .arrow files"
                )
            fmts = {detect_format(f) for f in self.files}
            if len(fmts) > 1:
                a = self.files[0]
                b = next(f for f in self.files if detect_format(f) != detect_format(a))
                raise ConnectorError(
                    f"input {path} mixes formats ({a.name} and {b.name}); use one format "
                    "per directory"
                )
        else:
            self.root = None
            self.files = [path]
        fmt = detect_format(self.files[0])
        assert fmt is not None
        self.format = fmt
        self._parts: list[dict[str, str | None]] = [
            _partition_values(self.root, f) if self.root else {} for f in self.files
        ]
        keys: list[str] = []
        for p in self._parts:
            for k in p:
                if k not in keys:
                    keys.append(k)
        self.partition_by: list[str] = keys
        self._part_types = {k: _partition_type(p.get(k) for p in self._parts) for k in keys}
        self._file_schema = self._first_schema()
        fields = list(self._file_schema)
        if self.format in ("csv", "jsonl"):
            fields = [f for f in fields if f.name != REJECT_COLUMN]
        for k in keys:
            if k in self._file_schema.names:
                raise ConnectorError(
                    f"input {path}: partition column '{k}' is also a column of the files"
                )
            fields.append(pa.field(k, self._part_types[k]))
        if self.format in ("csv", "jsonl"):
            fields.append(pa.field(REJECT_COLUMN, pa.string()))
        self._schema = pa.schema(fields, metadata=self._file_schema.metadata)

    def _first_schema(self) -> pa.Schema:
        first = self.files[0]
        if self.format == "parquet":
            schema = _parquet_schema(first)
            for f in self.files[1:]:
                problem = _drift(schema, _parquet_schema(f), f, first)
                if problem:
                    raise ConnectorError(problem)
            return schema
        if self.format == "arrow":
            schema = _open_ipc(first)[0]
            for f in self.files[1:]:
                problem = _drift(schema, _open_ipc(f)[0], f, first)
                if problem:
                    raise ConnectorError(problem)
            return schema
        if self.format == "csv":
            return _csv_infer(first)
        with _open_bin(first) as fh:
            return _JsonlReader(fh, str(first), self.batch_size).schema

    @property
    def schema(self) -> pa.Schema:
        """Columns of every batch (file columns, then partition columns, then reject)."""
        return self._schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Stream every file in order, each batch at most ``batch_size`` rows."""
        counter = [0]
        first = self.files[0]
        for file, parts in zip(self.files, self._parts, strict=True):
            inner = self._file_batches(file, first, counter)
            coalesce = self.format in ("csv", "jsonl")
            for batch in rechunk(inner, self.batch_size, coalesce=coalesce):
                yield self._with_parts(batch, parts)

    def column_batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Only ``columns`` of every batch (pre-passes that need a few columns of a table).

        Parquet reads just those column chunks (a template column is never decoded for a
        pass over names); other formats read whole batches and select.
        """
        wanted = [c for c in columns if c in self._schema.names]
        if self.format != "parquet" or any(c in self.partition_by for c in wanted):
            for batch in self.batches():
                yield batch.select(wanted)
            return
        schema = pa.schema([self._schema.field(c) for c in wanted])
        for file in self.files:
            for batch in rechunk(_iter_parquet(file, self.batch_size, wanted), self.batch_size):
                yield batch if batch.schema.equals(schema) else batch.cast(schema)

    def _file_batches(
        self, file: Path, first: Path, counter: list[int]
    ) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            yield from _iter_parquet(file, self.batch_size)
        elif self.format == "arrow":
            yield from _open_ipc(file)[1]()
        elif self.format == "csv":
            schema = pa.schema([f for f in self._file_schema if f.name != REJECT_COLUMN])
            yield from _iter_csv(file, schema, first, counter)
        else:
            base = pa.schema([f for f in self._file_schema if f.name != REJECT_COLUMN])
            with _open_bin(file) as fh:
                yield from _JsonlReader(
                    fh,
                    str(file),
                    self.batch_size,
                    schema=base if file != first else None,
                    first=str(first),
                )

    def _with_parts(self, batch: pa.RecordBatch, parts: dict[str, str | None]) -> pa.RecordBatch:
        if not self.partition_by:
            if self.format in ("parquet", "arrow") and not batch.schema.equals(self._schema):
                return batch.cast(self._schema)
            return batch
        arrays = [
            c for c, f in zip(batch.columns, batch.schema, strict=True) if f.name != REJECT_COLUMN
        ]
        n = batch.num_rows
        for k in self.partition_by:
            typ = self._part_types[k]
            v = parts.get(k)
            value = None if v is None else (int(v) if pa.types.is_integer(typ) else v)
            arrays.append(pa.repeat(pa.scalar(value, typ), n))
        if REJECT_COLUMN in batch.schema.names:
            arrays.append(batch.column(REJECT_COLUMN))
        return pa.RecordBatch.from_arrays(arrays, schema=self._schema)

    def row_estimate(self) -> int | None:
        """Rows in the input by the Parquet footers (exact), for a progress bar's total;
        None for CSV, JSON Lines and Arrow files, whose row counts need a full read."""
        if self.format != "parquet":
            return None
        try:
            return int(sum(pq.ParquetFile(f).metadata.num_rows for f in self.files))
        except (OSError, pa.ArrowException):
            return None  # reading will say what is wrong with the file

    def ref(self) -> DatasetRef:
        """Lineage name: namespace ``file``, absolute path; the data files to hash."""
        return DatasetRef(
            uri=self.uri,
            namespace="file",
            name=str(self.path.resolve()),
            files=tuple(f.resolve() for f in self.files),
            table=self.table,
            schema=self._schema,
        )

    def __repr__(self) -> str:
        return f"FileSource({self.uri!r}, format={self.format!r}, files={len(self.files)})"


def _open_bin(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}") from exc


class StdinJsonlSource:
    """JSON Lines from standard input (URI ``-``), read ``batch_size`` lines at a time."""

    def __init__(
        self, *, batch_size: int = 65_536, stream: IO[bytes] | None = None, table: str | None = None
    ) -> None:
        self.batch_size = batch_size
        self.table = table
        self._reader = _JsonlReader(stream or sys.stdin.buffer, "<stdin>", batch_size)
        self.partition_by: list[str] = []

    @property
    def schema(self) -> pa.Schema:
        """Inferred from the first ``batch_size`` lines, plus :data:`REJECT_COLUMN`."""
        return self._reader.schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Yield the lines as batches of at most ``batch_size`` rows."""
        yield from self._reader

    def ref(self) -> DatasetRef:
        """Lineage name ``file`` / ``-``: standard input has no file to hash."""
        return DatasetRef(uri="-", namespace="file", name="-", table=self.table, schema=self.schema)


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------


def _strip_reject(schema: pa.Schema) -> pa.Schema:
    if REJECT_COLUMN in schema.names:
        return schema.remove(schema.get_field_index(REJECT_COLUMN))
    return schema


def _with_metadata(schema: pa.Schema, metadata: dict[str, str] | None) -> pa.Schema:
    meta = {
        k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
        for k, v in (schema.metadata or {}).items()
    }
    meta.update(metadata or {})
    return schema.with_metadata(dict(sorted(meta.items()))) if meta else schema.remove_metadata()


def _text_safe(batch: pa.RecordBatch, fmt: str) -> pa.RecordBatch:
    """Make a batch writable as text: binary -> base64, dictionaries decoded.

    For JSON Lines, dates stay ISO dates and zone-less timestamps are ISO timestamps
    (``2020-01-01T12:00:00``); zoned ones are written with their offset by the writer.

    CSV and JSON have no bytes type; base64 is the conventional, lossless spelling.
    Nested types are refused for CSV (no faithful spelling) with a pointer to a format
    that holds them.
    """
    arrays = []
    fields = []
    for col, field in zip(batch.columns, batch.schema, strict=True):
        typ = field.type
        if pa.types.is_dictionary(typ):
            col = col.cast(typ.value_type)
            typ = typ.value_type
        if (
            pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ)
            or pa.types.is_fixed_size_binary(typ)
            or pa.types.is_binary_view(typ)
        ):
            col = pa.array(
                [
                    None if v is None else base64.b64encode(v).decode("ascii")
                    for v in col.to_pylist()
                ],
                pa.string(),
            )
            typ = pa.string()
        elif fmt == "jsonl" and pa.types.is_date64(typ):
            col, typ = col.cast(pa.date32()), pa.date32()  # a date, not "1980-10-09 00:00:00"
        elif fmt == "jsonl" and pa.types.is_timestamp(typ) and typ.tz is None:
            # ISO 8601 ("T"; fractions as the unit has them); zoned ones get their offset
            col, typ = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S"), pa.string()
        elif fmt == "csv" and (pa.types.is_nested(typ)):
            raise ConnectorError(
                f"column '{field.name}' has type {typ}, which CSV cannot hold; write "
                "Parquet, Arrow or JSON Lines instead"
            )
        arrays.append(col)
        fields.append(pa.field(field.name, typ))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


class _Writer:
    """One output file in one format, written batch by batch."""

    def __init__(self, fh: IO[bytes], fmt: str, schema: pa.Schema) -> None:
        self.fh = fh
        self.fmt = fmt
        self.schema = schema
        self._w: Any = None  # Parquet: opened at the first batch, which chooses the encodings
        if fmt == "arrow":
            # Uncompressed so training jobs can memory-map the file zero-copy.
            self._w = ipc.new_file(fh, schema)
        elif fmt == "csv":
            empty = _text_safe(pa.RecordBatch.from_pylist([], schema=schema), "csv")
            self._w = pacsv.CSVWriter(fh, empty.schema)

    def _parquet(self, sample: pa.RecordBatch | None) -> Any:
        if self._w is None:
            opts = parquet_options(self.schema, sample)
            self._w = pq.ParquetWriter(self.fh, self.schema, **opts)
        return self._w

    def write(self, batch: pa.RecordBatch) -> None:
        if self.fmt == "parquet":
            self._parquet(batch).write_batch(batch)
        elif self.fmt == "arrow":
            self._w.write_batch(batch)
        elif self.fmt == "csv":
            self._w.write_batch(_text_safe(batch, "csv"))
        elif batch.num_rows:
            import polars as pl

            frame = cast(Any, pl.from_arrow(_text_safe(batch, "jsonl")))
            self.fh.write(frame.write_ndjson().encode("utf-8"))

    def close(self) -> None:
        if self.fmt == "parquet" and self._w is None:
            self._parquet(None)  # no batch came: still a valid, empty Parquet file
        if self._w is not None:
            self._w.close()
            self._w = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(final: Path) -> None:
    """Remove temporaries left by killed writers of the same output (their pid is gone)."""
    prefix = f".{final.name}.tmp-"
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            _remove(entry)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _prepare_final(final: Path, overwrite: bool, append: bool) -> None:
    if append:
        raise ConnectorError(
            f"cannot append to {final}: appending is supported for postgresql outputs only"
        )
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise OutputExistsError(f"output {final} exists; pass --overwrite to replace it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConnectorError(f"cannot write {final}: {exc.strerror or exc}") from exc
    _sweep_stale(final)


def _install(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``final`` atomically (files) or as close to it as POSIX allows (dirs)."""
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output {final} exists; pass --overwrite to replace it")
        if final.is_dir() and not final.is_symlink():
            # rename() cannot replace a non-empty directory: move the old one aside first;
            # at no moment does the final name hold a partial output.
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(final, old)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
            return
    if tmp.is_dir() and final.exists():
        final.unlink()
    os.replace(tmp, final)
    _fsync_dir(final.parent)


# --------------------------------------------------------------------------------------
# sinks
# --------------------------------------------------------------------------------------


class FileSink:
    """One output file (Parquet, CSV, JSON Lines or Arrow IPC), visible only on commit.

    Parameters
    ----------
    path:
        Final file name; the format comes from its suffix.
    schema:
        Schema of the batches (``REJECT_COLUMN`` is dropped: it is a source-to-masker
        channel, not data).
    metadata:
        Stored in the Arrow schema metadata of Parquet and Arrow outputs (key ids, policy
        hash), sorted so the bytes do not depend on dict order.
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        *,
        overwrite: bool = False,
        append: bool = False,
        metadata: dict[str, str] | None = None,
        uri: str | None = None,
    ) -> None:
        fmt = detect_format(path)
        if fmt is None:
            raise ConnectorError(f"unsupported output {path}")
        self.path = path
        self.uri = uri or str(path)
        self.format = fmt
        self.overwrite = overwrite
        self.schema = _with_metadata(_strip_reject(schema), metadata)
        _prepare_final(path, overwrite, append)
        self._tmp = _tmp_name(path)
        self._done = False
        self._files: tuple[Path, ...] = ()
        try:
            self._fh: IO[bytes] | None = open(self._tmp, "xb")  # noqa: SIM115
            self._writer = _Writer(self._fh, fmt, self.schema)
        except OSError as exc:
            self.abort()
            raise ConnectorError(f"cannot write {path}: {exc.strerror or exc}") from exc
        except pa.ArrowException as exc:
            self.abort()
            raise ConnectorError(f"cannot write {path}: {_one_line(exc)}") from exc

    def write(self, batch: pa.RecordBatch) -> None:
        """Append one batch to the temporary file."""
        if self._fh is None:
            raise ConnectorError(f"cannot write {self.path}: the sink is closed")
        batch = _conform(batch, self.schema, self.path)
        try:
            self._writer.write(batch)
        except OSError as exc:
            raise ConnectorError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except pa.ArrowException as exc:
            raise ConnectorError(f"cannot write {self.path}: {_one_line(exc)}") from exc

    def commit(self) -> None:
        """Close, fsync and rename the temporary file to the final name."""
        if self._done:
            return
        if self._fh is None:
            raise ConnectorError(f"cannot commit {self.path}: the sink was aborted")
        try:
            self._writer.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            _install(self._tmp, self.path, self.overwrite)
        except OSError as exc:
            self.abort()
            raise ConnectorError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._done = True
        self._files = (self.path.resolve(),)

    def abort(self) -> None:
        """Delete the temporary file; the final name is untouched."""
        if self._done:
            return
        if self._fh is not None:
            with contextlib.suppress(Exception):  # closing a half-written file may fail
                self._writer.close()
            self._fh.close()
            self._fh = None
        _remove(self._tmp)

    def ref(self) -> DatasetRef:
        """Lineage name; after commit, ``files`` holds the final file."""
        return DatasetRef(
            uri=self.uri,
            namespace="file",
            name=str(self.path.resolve()),
            files=self._files,
            schema=self.schema,
        )

    def __repr__(self) -> str:
        return f"FileSink({self.uri!r}, format={self.format!r})"


def _conform(batch: pa.RecordBatch, schema: pa.Schema, where: Path | str) -> pa.RecordBatch:
    if REJECT_COLUMN in batch.schema.names:
        batch = batch.drop_columns([REJECT_COLUMN])
    if batch.schema.equals(schema, check_metadata=False):
        return batch.replace_schema_metadata(schema.metadata)
    if batch.schema.names != schema.names:
        missing = [n for n in schema.names if n not in batch.schema.names]
        extra = [n for n in batch.schema.names if n not in schema.names]
        what = (
            f"lacks column '{missing[0]}'"
            if missing
            else f"has column '{extra[0]}' not in the output schema"
            if extra
            else "has the output columns in a different order"
        )
        raise ConnectorError(f"cannot write {where}: a batch {what}")
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConnectorError(
            f"cannot write {where}: a batch does not match the output schema ({_one_line(exc)})"
        ) from exc


class ParquetDirSink:
    """A directory of Parquet files, optionally hive-partitioned, visible only on commit.

    The directory is built under a temporary name and renamed on commit. With
    ``partition_by``, rows are split by the values of those columns into
    ``key=value/part-N.parquet`` (the columns are stored in the path, not the files,
    as hive readers expect); otherwise files roll over every :data:`ROWS_PER_FILE` rows.
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        *,
        overwrite: bool = False,
        append: bool = False,
        metadata: dict[str, str] | None = None,
        partition_by: Sequence[str] = (),
        uri: str | None = None,
    ) -> None:
        self.path = path
        self.uri = uri or str(path)
        self.overwrite = overwrite
        self.schema = _with_metadata(_strip_reject(schema), metadata)
        self.partition_by = [k for k in partition_by if k in self.schema.names]
        if self.partition_by and len(self.partition_by) == len(self.schema):
            self.partition_by = []  # nothing would be left in the files
        self._file_schema = pa.schema(
            [f for f in self.schema if f.name not in self.partition_by],
            metadata=self.schema.metadata,
        )
        _prepare_final(path, overwrite, append)
        self._tmp = _tmp_name(path)
        try:
            self._tmp.mkdir()
        except OSError as exc:
            raise ConnectorError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._open: dict[str, tuple[IO[bytes], _Writer, int, int]] = {}
        self._counts: dict[str, int] = {}
        self._done = False
        self._aborted = False
        self._files: tuple[Path, ...] = ()

    def write(self, batch: pa.RecordBatch) -> None:
        """Write one batch (split by partition values when partitioned)."""
        if self._aborted or self._done:
            raise ConnectorError(f"cannot write {self.path}: the sink is closed")
        batch = _conform(batch, self.schema, self.path)
        if not batch.num_rows:
            return
        try:
            if not self.partition_by:
                self._write_part("", batch)
                return
            keys = pa.Table.from_batches([batch]).select(self.partition_by)
            groups = keys.group_by(self.partition_by, use_threads=False).aggregate([])
            # Sort the groups so the file creation order is deterministic.
            groups = groups.sort_by([(k, "ascending") for k in self.partition_by])
            for row in groups.to_pylist():
                mask = None
                for k in self.partition_by:
                    col = batch.column(k)
                    cond = pc.is_null(col) if row[k] is None else pc.equal(col, row[k])
                    cond = pc.fill_null(cond, False)
                    mask = cond if mask is None else pc.and_(mask, cond)
                part = batch.filter(mask).drop_columns(self.partition_by)
                rel = "/".join(
                    f"{k}={_HIVE_NULL if row[k] is None else quote(str(row[k]), safe='')}"
                    for k in self.partition_by
                )
                self._write_part(rel, part)
        except OSError as exc:
            raise ConnectorError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except pa.ArrowException as exc:
            raise ConnectorError(f"cannot write {self.path}: {_one_line(exc)}") from exc

    def _write_part(self, rel: str, batch: pa.RecordBatch) -> None:
        entry = self._open.get(rel)
        if entry is not None and entry[3] >= ROWS_PER_FILE:
            self._close_one(rel)
            entry = None
        if entry is None:
            index = self._counts.get(rel, 0)
            folder = self._tmp / rel if rel else self._tmp
            folder.mkdir(parents=True, exist_ok=True)
            fh: IO[bytes] = open(folder / f"part-{index}.parquet", "xb")  # noqa: SIM115
            self._counts[rel] = index + 1
            writer = _Writer(fh, "parquet", self._file_schema)
            entry = (fh, writer, index, 0)
        fh, writer, index, rows = entry
        writer.write(batch)
        self._open[rel] = (fh, writer, index, rows + batch.num_rows)

    def _close_one(self, rel: str) -> None:
        fh, writer, _, _ = self._open.pop(rel)
        writer.close()
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()

    def commit(self) -> None:
        """Close every file, fsync, and rename the directory into place."""
        if self._done:
            return
        if self._aborted:
            raise ConnectorError(f"cannot commit {self.path}: the sink was aborted")
        try:
            for rel in list(self._open):
                self._close_one(rel)
            if not any(self._tmp.rglob("*.parquet")):
                # An empty result still records its schema.
                with open(self._tmp / "part-0.parquet", "xb") as fh:
                    _Writer(fh, "parquet", self._file_schema).close()
                    os.fsync(fh.fileno())
            for d in sorted({p.parent for p in self._tmp.rglob("*")} | {self._tmp}):
                _fsync_dir(d)
            _install(self._tmp, self.path, self.overwrite)
        except OSError as exc:
            self.abort()
            raise ConnectorError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._done = True
        self._files = tuple(f.resolve() for f in list_data_files(self.path))

    def abort(self) -> None:
        """Delete the temporary directory; the final name is untouched."""
        if self._done:
            return
        self._aborted = True
        for fh, writer, _, _ in self._open.values():
            with contextlib.suppress(Exception):  # best effort on a half-written file
                writer.close()
            fh.close()
        self._open.clear()
        _remove(self._tmp)

    def ref(self) -> DatasetRef:
        """Lineage name; after commit, ``files`` lists every part file."""
        return DatasetRef(
            uri=self.uri,
            namespace="file",
            name=str(self.path.resolve()),
            files=self._files,
            schema=self.schema,
        )

    def __repr__(self) -> str:
        return f"ParquetDirSink({self.uri!r}, partition_by={self.partition_by!r})"


class StdoutJsonlSink:
    """JSON Lines on standard output (URI ``-``).

    A pipe cannot be un-written, so this sink is not atomic: ``commit`` flushes and
    ``abort`` only stops writing. Use a file output when atomicity matters.
    """

    def __init__(self, schema: pa.Schema, *, stream: IO[bytes] | None = None) -> None:
        self.schema = _strip_reject(schema)
        self._stream = stream or sys.stdout.buffer
        self._writer = _Writer(self._stream, "jsonl", self.schema)
        self._closed = False

    def write(self, batch: pa.RecordBatch) -> None:
        """Write one batch as JSON Lines."""
        if self._closed:
            raise ConnectorError("cannot write to standard output: the sink is closed")
        try:
            self._writer.write(_conform(batch, self.schema, "standard output"))
        except BrokenPipeError as exc:
            raise ConnectorError("cannot write to standard output: the pipe was closed") from exc

    def commit(self) -> None:
        """Flush standard output."""
        if not self._closed:
            self._stream.flush()
            self._closed = True

    def abort(self) -> None:
        """Stop writing (what was written cannot be taken back)."""
        self._closed = True

    def ref(self) -> DatasetRef:
        """Lineage name ``file`` / ``-``; nothing to hash."""
        return DatasetRef(uri="-", namespace="file", name="-", schema=self.schema)
