"""File formats, one module each, registered by name and file suffix.

>>> from biomask.connectors.formats import detect_format, get_format
>>> detect_format("captures.ndjson")
'jsonl'
>>> get_format("parquet").suffixes
('.parquet', '.pq')

Each module (:mod:`.parquet`, :mod:`.csv`, :mod:`.jsonl`, :mod:`.ipc`) defines one
``FORMAT`` satisfying :class:`~biomask.connectors.formats.base.FileFormat`: how to open
the files of a dataset (schema, batches, a row count when it is cheap) and how to write a
file batch by batch. The file sources and sinks use only that protocol, so adding a
format is one module plus its line in :data:`_BUILTIN` (or a :func:`register` call from
outside), and no code branches on a format's name.

This registry maps *file suffixes* to formats. Which kind of connector a URI opens
(a file or directory, ``-``, ``postgresql://``) is decided by
:mod:`biomask.connectors.registry`, which asks this one about suffixes.
"""

from __future__ import annotations

from pathlib import Path

from biomask.connectors.formats import csv, ipc, jsonl, parquet
from biomask.connectors.formats._text import MAX_FIELD_BYTES
from biomask.connectors.formats.base import FileFormat, FormatReader, FormatWriter
from biomask.errors import ConnectorError

__all__ = [
    "MAX_FIELD_BYTES",
    "FileFormat",
    "FormatReader",
    "FormatWriter",
    "detect_format",
    "format_of",
    "formats",
    "get_format",
    "register",
    "suffix_list",
]

_BY_NAME: dict[str, FileFormat] = {}
_BY_SUFFIX: dict[str, FileFormat] = {}


def register(fmt: FileFormat) -> None:
    """Add a file format; its name and suffixes must be new.

    Raises
    ------
    ValueError
        The name or one of the suffixes is already registered (to avoid a silent takeover
        of ``.csv`` by a plug-in, say).
    """
    if fmt.name in _BY_NAME:
        raise ValueError(f"file format '{fmt.name}' is already registered")
    if not fmt.suffixes:
        raise ValueError(f"file format '{fmt.name}' names no file suffix")
    for suffix in fmt.suffixes:
        if suffix != suffix.lower() or not suffix.startswith("."):
            raise ValueError(f"file format '{fmt.name}': suffix '{suffix}' is not '.lower'")
        if suffix in _BY_SUFFIX:
            owner = _BY_SUFFIX[suffix].name
            raise ValueError(f"suffix '{suffix}' already belongs to file format '{owner}'")
    _BY_NAME[fmt.name] = fmt
    for suffix in fmt.suffixes:
        _BY_SUFFIX[suffix] = fmt


def formats() -> tuple[FileFormat, ...]:
    """Every registered format, in registration order (the order messages list them)."""
    return tuple(_BY_NAME.values())


def get_format(name: str) -> FileFormat:
    """The format called ``name``.

    Raises
    ------
    ConnectorError
        No format has that name (the message lists those that exist).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise ConnectorError(f"unknown file format '{name}' (known: {known})") from None


def format_of(path: str | Path) -> FileFormat | None:
    """The format a file path's suffix names (case-insensitive), or None."""
    return _BY_SUFFIX.get(Path(path).suffix.lower())


def detect_format(path: str | Path) -> str | None:
    """Format name for a file path from its suffix, or None when the suffix is unknown."""
    fmt = format_of(path)
    return None if fmt is None else fmt.name


def suffix_list() -> str:
    """The main suffix of each format, for messages: ``.parquet, .csv, .jsonl or .arrow``."""
    main = [f.suffixes[0] for f in _BY_NAME.values()]
    return main[0] if len(main) == 1 else f"{', '.join(main[:-1])} or {main[-1]}"


#: The formats biomask ships, in the order messages list them.
_BUILTIN: tuple[FileFormat, ...] = (parquet.FORMAT, csv.FORMAT, jsonl.FORMAT, ipc.FORMAT)
for _fmt in _BUILTIN:
    register(_fmt)
