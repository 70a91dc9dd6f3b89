"""Batch plumbing every connector shares: re-chunking, conforming to a sink's schema.

These are the format-free steps between a reader and a writer, kept in one place so the
file formats, the file sinks and the PostgreSQL connector do not each grow their own
copy (and their own error wording).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from biomask.connectors.base import REJECT_COLUMN
from biomask.errors import ConnectorError

__all__ = ["conform", "one_line", "rechunk", "strip_reject", "with_metadata"]


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


def one_line(exc: BaseException) -> str:
    """First line of an Arrow error with quoted fragments removed (they may hold values)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r'"[^"]*"', '"…"', text)


def strip_reject(schema: pa.Schema) -> pa.Schema:
    """``schema`` without :data:`REJECT_COLUMN`: a source-to-masker channel, never data."""
    if REJECT_COLUMN in schema.names:
        return schema.remove(schema.get_field_index(REJECT_COLUMN))
    return schema


def with_metadata(schema: pa.Schema, metadata: dict[str, str] | None) -> pa.Schema:
    """``schema`` with ``metadata`` added, keys sorted so the bytes do not depend on order."""
    meta = {
        k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
        for k, v in (schema.metadata or {}).items()
    }
    meta.update(metadata or {})
    return schema.with_metadata(dict(sorted(meta.items()))) if meta else schema.remove_metadata()


def conform(batch: pa.RecordBatch, schema: pa.Schema, where: Path | str) -> pa.RecordBatch:
    """``batch`` as the sink's ``schema`` has it: reject column dropped, types cast.

    Raises
    ------
    ConnectorError
        The batch lacks a column, has an extra one, has them in another order, or holds a
        value the output type cannot (the message names the output, never the value).
    """
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
            f"cannot write {where}: a batch does not match the output schema ({one_line(exc)})"
        ) from exc
