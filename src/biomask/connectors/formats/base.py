"""What a file format is to biomask: a reader of a dataset's files and a batch writer.

A format module defines one object satisfying :class:`FileFormat` and lists it in
:mod:`biomask.connectors.formats`; the file sources and sinks then read and write it
through this protocol alone, never by its name. (URI schemes are a different registry:
:mod:`biomask.connectors.registry` picks files, stdin/stdout or PostgreSQL from a URI;
this one picks how a file's bytes become batches.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol

import pyarrow as pa

__all__ = ["FileFormat", "FormatReader", "FormatWriter", "schema_drift"]


class FormatReader(Protocol):
    """The files of one dataset in one format, opened by :meth:`FileFormat.open_dataset`.

    Opening reads only what fixes the schema (Parquet and Arrow footers of every file, so
    drift between files fails before anything is written; the first block of a text
    file). Reading is then file by file, in the dataset's order.
    """

    @property
    def schema(self) -> pa.Schema:
        """The files' columns (never :data:`~biomask.connectors.REJECT_COLUMN`)."""
        ...

    def batches(self, file: Path, *, first_row: int = 0) -> Iterator[pa.RecordBatch]:
        """Stream one file of the dataset.

        Batches have the file's columns, then, for a format that ``flags_rows``, the
        reject column. ``first_row`` is the number of data rows of the dataset before
        this file, so a reason can name the dataset's row.
        """
        ...

    def columns(self, file: Path, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Only the columns ``names`` of one file (for a pre-pass over a few columns).

        Cheap where the format ``projects`` (the other columns are never decoded); other
        formats read whole batches and select.
        """
        ...

    def row_count(self) -> int | None:
        """Rows in the dataset when known without reading them, else None."""
        ...


class FormatWriter(Protocol):
    """One output file in one format, written batch by batch into an open binary file."""

    def write(self, batch: pa.RecordBatch) -> None:
        """Append one batch (already conformed to the schema the writer was opened with)."""
        ...

    def close(self) -> None:
        """Finish the file (footers); the caller flushes, fsyncs and closes the handle."""
        ...


class FileFormat(Protocol):
    """A registered file format.

    Attributes
    ----------
    name:
        What messages and ``repr`` call it (``parquet``, ``csv``, ``jsonl``, ``arrow``).
    suffixes:
        File suffixes, lower case with the dot; the first is the one messages name.
    flags_rows:
        Its reader can read rows it cannot trust (invalid UTF-8, a broken line) and flags
        them in the reject column, which every batch then carries.
    coalesce:
        Its reader yields many small batches, which the source joins up to the batch size.
    projects:
        :meth:`FormatReader.columns` decodes only the columns asked for.
    """

    name: str
    suffixes: tuple[str, ...]
    flags_rows: bool
    coalesce: bool
    projects: bool

    def open_dataset(self, files: Sequence[Path], batch_size: int) -> FormatReader:
        """Open ``files`` (one or more, in order) as one dataset.

        Raises
        ------
        ConnectorError
            A file is unreadable, not of this format, or its schema differs from the
            first file's (the message names both files and the column).
        """
        ...

    def open_writer(self, fh: IO[bytes], schema: pa.Schema) -> FormatWriter:
        """Start a file of ``schema`` in ``fh`` (``schema`` carries the output metadata)."""
        ...


def schema_drift(expected: pa.Schema, got: pa.Schema, file: Path, first: Path) -> str | None:
    """One-line description of how ``got`` (of ``file``) differs from ``first``'s, or None."""
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
