"""URI dispatch: one string picks the source or sink.

A URI is ``-`` (JSON Lines on stdin/stdout), ``postgresql://...`` (or ``postgres://``),
``file://PATH``, or a plain path: a file ending in .parquet, .csv, .jsonl or .arrow (and
their aliases), or a directory of such files. Everything that names a URI in a message or
in lineage goes through :func:`display_uri`, so a password never leaves this module.

This module decides the *kind* of connector from the URI's scheme and shape; which file
format a path holds is the business of the format registry,
:mod:`biomask.connectors.formats`, asked by suffix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa

from biomask.connectors.base import Sink, Source
from biomask.connectors.files import (
    FileSink,
    FileSource,
    ParquetDirSink,
    StdinJsonlSource,
    StdoutJsonlSink,
)
from biomask.connectors.formats import detect_format, suffix_list
from biomask.connectors.listing import table_entries
from biomask.errors import ConnectorError
from biomask.types import display_uri

__all__ = [
    "data_suffix",
    "display_uri",
    "is_postgres_uri",
    "open_sink",
    "open_source",
    "open_tables",
    "quarantine_uri",
    "table_sink_uri",
]

_PG_SCHEMES = ("postgresql://", "postgres://")
#: Suffix written for a table whose input had none (a database table, a directory).
_DEFAULT_SUFFIX = ".parquet"


def _unsupported(uri: str) -> ConnectorError:
    return ConnectorError(
        f"unsupported URI '{display_uri(uri)}': use a path ending in {suffix_list()}, "
        "a directory of them, '-' for JSON Lines on stdin/stdout, or postgresql://..."
    )


def is_postgres_uri(uri: str) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URIs."""
    return uri.lower().startswith(_PG_SCHEMES)


def _path_of(uri: str) -> Path:
    """Local path for a plain path or ``file://`` URI; other schemes are unsupported."""
    if uri.lower().startswith("file://"):
        return Path(urlsplit(uri).path)
    if "://" in uri:
        raise _unsupported(uri)
    return Path(uri).expanduser()


def open_source(uri: str, *, batch_size: int = 65_536) -> Source:
    """Open ``uri`` for reading.

    Parameters
    ----------
    uri:
        ``-``, ``postgresql://...?table=NAME`` / ``?query=SELECT ...``, or a path to a
        file or directory (see the module docstring).
    batch_size:
        Largest number of rows per batch; memory is bounded by it.

    Raises
    ------
    ConnectorError
        Unsupported URI, missing input, unreadable file, schema drift, connection failure.
    """
    if batch_size < 1:
        raise ConnectorError(f"batch size must be at least 1, not {batch_size}")
    if uri == "-":
        return StdinJsonlSource(batch_size=batch_size)
    if is_postgres_uri(uri):
        from biomask.connectors.postgres import PostgresSource

        return PostgresSource(uri, batch_size=batch_size)
    path = _path_of(uri)
    if path.is_dir():
        return FileSource(path, batch_size=batch_size, uri=uri)
    if detect_format(path) is None:
        if not path.exists() and not path.suffix:
            raise ConnectorError(f"input {path} not found")
        raise _unsupported(uri)
    if not path.exists():
        raise ConnectorError(f"input {path} not found")
    return FileSource(path, batch_size=batch_size, uri=uri)


def _is_dir_uri(uri: str, path: Path) -> bool:
    return uri.endswith(("/", os.sep)) or path.is_dir() or not path.suffix


def open_sink(
    uri: str,
    schema: pa.Schema,
    *,
    overwrite: bool = False,
    append: bool = False,
    metadata: dict[str, str] | None = None,
    partition_by: Sequence[str] = (),
) -> Sink:
    """Open ``uri`` for writing; nothing is visible under it until ``commit()``.

    Parameters
    ----------
    schema:
        Schema of the batches that will be written.
    overwrite:
        Replace an existing output (on commit, atomically).
    append:
        Add rows to an existing PostgreSQL table (files cannot be appended to).
    metadata:
        Stored in the Arrow schema metadata of Parquet and Arrow outputs (and as a table
        comment in PostgreSQL).
    partition_by:
        For a directory output: hive-partition by these columns (pass the source's
        ``partition_by`` to keep the input's layout). Columns absent from ``schema`` are
        ignored.

    Raises
    ------
    OutputExistsError
        The output exists and neither ``overwrite`` nor ``append`` was given.
    ConnectorError
        Unsupported URI or the output cannot be created.
    """
    if uri == "-":
        if append:
            raise ConnectorError("cannot append to standard output")
        return StdoutJsonlSink(schema)
    if is_postgres_uri(uri):
        from biomask.connectors.postgres import PostgresSink

        return PostgresSink(uri, schema, overwrite=overwrite, append=append, metadata=metadata)
    path = _path_of(uri)
    if detect_format(path) is not None and not path.is_dir():
        return FileSink(
            path, schema, overwrite=overwrite, append=append, metadata=metadata, uri=uri
        )
    if _is_dir_uri(uri, path):
        return ParquetDirSink(
            path,
            schema,
            overwrite=overwrite,
            append=append,
            metadata=metadata,
            partition_by=partition_by,
            uri=uri,
        )
    raise _unsupported(uri)


def open_tables(uri: str, names: Sequence[str], *, batch_size: int = 65_536) -> dict[str, Source]:
    """Open one source per table name, for multi-table policies.

    ``uri`` is a directory holding ``<name>.parquet`` / ``.csv`` / ``.jsonl`` / ``.arrow``
    or a ``<name>/`` directory per table, or a ``postgresql://`` URI (each name is a
    table; ``?schema=S`` picks the schema).

    Raises
    ------
    ConnectorError
        A table is missing (the message names it and what was found), ambiguous, or
        unreadable.
    """
    if is_postgres_uri(uri):
        from biomask.connectors.postgres import open_pg_tables

        return open_pg_tables(uri, names, batch_size=batch_size)
    path = _path_of(uri)
    if not path.exists():
        raise ConnectorError(f"input {path} not found")
    if not path.is_dir():
        raise ConnectorError(
            f"input {path} is a file; a multi-table policy needs a directory holding one "
            "file per table, or a postgresql:// URI"
        )
    entries = table_entries(path)
    sources: dict[str, Source] = {}
    for name in names:
        cands = entries.get(name, [])
        if not cands:
            have = ", ".join(sorted(entries)) or "nothing"
            raise ConnectorError(f"table '{name}' not found in {path} (found: {have})")
        if len(cands) > 1:
            listed = ", ".join(c.name for c in cands)
            raise ConnectorError(f"table '{name}' is ambiguous in {path}: {listed}")
        sources[name] = FileSource(cands[0], batch_size=batch_size, uri=str(cands[0]), table=name)
    return sources


def _suffix_for(like: str, name: str) -> str:
    """How table ``name`` is stored in the input ``like``: a file suffix, or ``/``."""
    if like == "-":
        return ".jsonl"
    if is_postgres_uri(like):
        return _DEFAULT_SUFFIX
    try:
        path = _path_of(like)
    except ConnectorError:
        return _DEFAULT_SUFFIX
    if path.is_dir():
        cands = table_entries(path).get(name, [])
        if len(cands) == 1:
            c = cands[0]
            return "/" if c.is_dir() else c.suffix
        return _DEFAULT_SUFFIX
    return path.suffix if detect_format(path) is not None else _DEFAULT_SUFFIX


def table_sink_uri(uri: str, name: str, like: str) -> str:
    """Output URI for table ``name`` under the output directory or database ``uri``.

    The table keeps the format it had in the input ``like`` (``subjects.csv`` in ->
    ``<uri>/subjects.csv`` out; a ``subjects/`` directory -> ``<uri>/subjects/``); input
    from a database is written as Parquet. For a PostgreSQL output the name becomes the
    table (in the ``?schema=`` schema if given).
    """
    if is_postgres_uri(uri):
        from biomask.connectors.postgres import with_table

        return with_table(uri, name)
    if uri == "-":
        raise ConnectorError(
            "a multi-table output must be a directory or a postgresql:// URI, not '-'"
        )
    suffix = _suffix_for(like, name)
    base = uri.rstrip("/" + os.sep) or "/"
    if suffix == "/":
        return f"{base}/{name}/"
    return f"{base}/{name}{suffix}"


def data_suffix(uri: str) -> str | None:
    """The data-file suffix a local output names (``.parquet``...), else None.

    None for ``-``, database URIs, directories and names without a known suffix: what a
    multi-table run can write into (one file per table).
    """
    if uri == "-" or is_postgres_uri(uri):
        return None
    try:
        path = _path_of(uri)
    except ConnectorError:
        return None
    if uri.endswith(("/", os.sep)) or path.is_dir() or detect_format(path) is None:
        return None
    return path.suffix


def quarantine_uri(output_uri: str, *, lineage_dir: str | Path | None = None) -> str:
    """Where quarantined rows of ``output_uri`` go: ``<output>.quarantine``, same format.

    ``out.parquet`` -> ``out.quarantine.parquet``; ``out/`` -> ``out.quarantine/``;
    PostgreSQL table ``t`` -> ``t_quarantine``; ``-`` (stdout) -> beside the run's
    lineage directory (a pipe has no sibling, and the lineage is where a user of a
    stdout run looks): ``runs/x.lineage`` -> ``runs/x.quarantine.jsonl``.

    Raises
    ------
    ConnectorError
        ``-`` without ``lineage_dir``.
    """
    if output_uri == "-":
        if lineage_dir is None:
            raise ConnectorError("quarantine of a standard-output run goes beside its lineage")
        lin = Path(lineage_dir)
        stem = lin.name[: -len(".lineage")] if lin.name.endswith(".lineage") else lin.name
        return str(lin.with_name(f"{stem or 'stdout'}.quarantine.jsonl"))
    if is_postgres_uri(output_uri):
        from biomask.connectors.postgres import quarantine_pg_uri

        return quarantine_pg_uri(output_uri)
    prefix = "file://" if output_uri.lower().startswith("file://") else ""
    path = _path_of(output_uri)
    if detect_format(path) is not None and not path.is_dir():
        q = path.with_name(f"{path.stem}.quarantine{path.suffix}")
        return prefix + str(q)
    trailing = output_uri.endswith(("/", os.sep))
    return prefix + str(path.with_name(path.name + ".quarantine")) + ("/" if trailing else "")
