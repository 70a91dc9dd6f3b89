"""Which files make a dataset: directories of part files, tables of an export, hive keys.

* A dataset directory is every data file below it (any registered format's suffix),
  sorted by relative path so the read order, and so the output, is the same on every
  run. Names starting with ``.`` or ``_`` are not data (``_SUCCESS``, ``_metadata``,
  temporaries), as Spark and pyarrow agree.
* A multi-table export is a directory with one ``<name>.<suffix>`` file or ``<name>/``
  directory per table.
* Hive partitions: a path segment ``key=value`` gives a column ``key`` (int32 when every
  value is an int32, int64 for larger ints, string otherwise, as pyarrow's hive discovery
  infers; ``__HIVE_DEFAULT_PARTITION__`` is null). Writers spell segments the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow as pa

from biomask.connectors.formats import detect_format
from biomask.errors import ConnectorError

__all__ = [
    "HIVE_NULL",
    "is_hidden",
    "list_data_files",
    "partition_path",
    "partition_type",
    "partition_values",
    "table_entries",
]

#: The hive spelling of a null partition value.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def is_hidden(name: str) -> bool:
    """True for names that are not data (``_SUCCESS``, ``_metadata``, ``.tmp`` files)."""
    return name.startswith((".", "_"))


def list_data_files(root: Path) -> list[Path]:
    """Data files under ``root`` in a stable (sorted) order, skipping hidden names.

    Sorting by relative path makes the read order, and so the output, deterministic.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for f in filenames:
            if not is_hidden(f) and detect_format(f) is not None:
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def table_entries(root: Path) -> dict[str, list[Path]]:
    """Table name -> candidate paths (``name.<suffix>`` files and ``name/`` directories).

    Raises
    ------
    ConnectorError
        ``root`` cannot be listed.
    """
    found: dict[str, list[Path]] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise ConnectorError(f"cannot read {root}: {exc.strerror or exc}") from exc
    for entry in entries:
        if is_hidden(entry.name):
            continue
        if entry.is_dir():
            found.setdefault(entry.name, []).append(entry)
        elif detect_format(entry) is not None:
            found.setdefault(entry.stem, []).append(entry)
    return found


def partition_values(root: Path, file: Path) -> dict[str, str | None]:
    """The hive ``key=value`` segments between ``root`` and ``file``, decoded."""
    parts: dict[str, str | None] = {}
    for seg in file.relative_to(root).parts[:-1]:
        if "=" in seg:
            key, _, raw = seg.partition("=")
            value = unquote(raw)
            parts[key] = None if value == HIVE_NULL else value
    return parts


def partition_type(values: Iterable[str | None]) -> pa.DataType:
    """The column type of one partition key from all its values (pyarrow's inference)."""
    vals = [v for v in values if v is not None]
    if vals and all(re.fullmatch(r"-?\d+", v) for v in vals):
        return pa.int32() if all(-(2**31) <= int(v) < 2**31 for v in vals) else pa.int64()
    return pa.string()


def partition_path(keys: Sequence[str], row: Mapping[str, object]) -> str:
    """The relative folder ``k1=v1/k2=v2`` of one group of partition values."""
    return "/".join(
        f"{k}={HIVE_NULL if row[k] is None else quote(str(row[k]), safe='')}" for k in keys
    )
