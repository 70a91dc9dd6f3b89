"""Parquet: read row group by row group, written with fixed settings (same batches, same bytes).

Reading streams ``ParquetFile.iter_batches`` without pre-buffering, so memory follows the
batch size, not the file; a pre-pass over a few columns reads just those column chunks.
Every file's footer is read when the dataset opens, so drift between files fails before
anything is written, and the footers give an exact row count for progress bars.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomask.connectors.formats.base import schema_drift
from biomask.errors import ConnectorError

__all__ = ["FORMAT", "ParquetFormat", "parquet_options"]

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
      writes in 65 ms instead of 79 ms, into a smaller file.
    - Number, date and time columns where most sampled values differ (timestamps, scores,
      coordinates, shifted dates) get no dictionary either, but keep their min/max
      statistics, which prune row groups by time or range: the dictionary of such a
      column only grows until it falls back, and its pages come out larger. On the
      structured bench's output this writes in 77 ms instead of 89 ms, into 6.9 MB
      instead of 7.3 MB (best of 9; docs/connectors.md).

    The choices depend only on the first batch, so the same input still gives the same
    bytes.

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
    spread = _distinct_columns(schema, sample, numeric=True)
    if not sealed and not busy and not spread:
        return opts
    leaves = {f.name: _leaf_paths(f) for f in schema}
    plain = [p for name, paths in leaves.items() if name not in sealed | busy for p in paths]
    nodict = sealed | busy | spread
    coded = [p for name, paths in leaves.items() if name not in nodict for p in paths]
    if sealed:
        opts["compression"] = {
            p: ("none" if name in sealed else _PARQUET_OPTS["compression"])
            for name, paths in leaves.items()
            for p in paths
        }
    opts["use_dictionary"] = coded
    opts["write_statistics"] = plain
    return opts


def _distinct_columns(
    schema: pa.Schema, sample: pa.RecordBatch | pa.Table | None, *, numeric: bool = False
) -> set[str]:
    """String/binary columns (or, with ``numeric``, fixed-width number, date and time
    columns) of which over half the sampled values are distinct."""
    if sample is None or sample.num_rows == 0:
        return set()
    head = sample.slice(0, 4096)
    out = set()
    for f in schema:
        t = f.type
        if f.name not in head.schema.names or not (
            _fixed_width(t)
            if numeric
            else (
                pa.types.is_string(t)
                or pa.types.is_large_string(t)
                or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)
            )
        ):
            continue
        col = head.column(f.name)
        valid = len(col) - col.null_count
        if valid >= 64 and pc.count_distinct(col).as_py() * 2 > valid:
            out.add(f.name)
    return out


def _fixed_width(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_temporal(t)
        or pa.types.is_decimal(t)
    )


def _leaf_paths(field: pa.Field) -> list[str]:
    """The Parquet column paths of one Arrow field, as pyarrow itself names them."""
    if not pa.types.is_nested(field.type):
        return [field.name]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.schema([field]).empty_table(), buf)
    meta = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return [meta.column(i).path for i in range(len(meta))]


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.ParquetFile(path).schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise ConnectorError(f"cannot read {path}: not a valid Parquet file") from exc


def _iter(
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


class _Reader:
    def __init__(self, files: Sequence[Path], batch_size: int) -> None:
        self.files = list(files)
        self.batch_size = batch_size
        first = self.files[0]
        schema = _schema(first)
        for f in self.files[1:]:
            problem = schema_drift(schema, _schema(f), f, first)
            if problem:
                raise ConnectorError(problem)
        self._schema = schema

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def batches(self, file: Path, *, first_row: int = 0) -> Iterator[pa.RecordBatch]:
        return _iter(file, self.batch_size)

    def columns(self, file: Path, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        return _iter(file, self.batch_size, list(names))

    def row_count(self) -> int | None:
        try:
            return int(sum(pq.ParquetFile(f).metadata.num_rows for f in self.files))
        except (OSError, pa.ArrowException):
            return None  # reading will say what is wrong with the file


class _Writer:
    """Opened at the first batch, which chooses the encodings (:func:`parquet_options`)."""

    def __init__(self, fh: IO[bytes], schema: pa.Schema) -> None:
        self.fh = fh
        self.schema = schema
        self._w: pq.ParquetWriter | None = None
        self._closed = False

    def _writer(self, sample: pa.RecordBatch | None) -> pq.ParquetWriter:
        if self._w is None:
            self._w = pq.ParquetWriter(self.fh, self.schema, **parquet_options(self.schema, sample))
        return self._w

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer(batch).write_batch(batch)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer(None).close()  # no batch came: still a valid, empty Parquet file


class ParquetFormat:
    """Parquet (``.parquet``, ``.pq``): every Arrow type, zstd, deterministic bytes."""

    name = "parquet"
    suffixes: tuple[str, ...] = (".parquet", ".pq")
    flags_rows = False
    coalesce = False
    projects = True

    def open_dataset(self, files: Sequence[Path], batch_size: int) -> _Reader:
        return _Reader(files, batch_size)

    def open_writer(self, fh: IO[bytes], schema: pa.Schema) -> _Writer:
        return _Writer(fh, schema)


FORMAT = ParquetFormat()
