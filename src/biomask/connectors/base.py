"""Source and sink protocols: streams of RecordBatches, chosen by URI.

Connectors know nothing of masking. A source yields ``pyarrow.RecordBatch`` objects of at
most ``batch_size`` rows, so memory is bounded by the batch size, never the input size. A
sink writes under a temporary name and makes the output visible only in :meth:`Sink.commit`
(atomic rename, or one database transaction), so a failed or killed run leaves nothing
under the final name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pyarrow as pa

from biomask.types import REJECT_COLUMN, DatasetRef

__all__ = [
    "REJECT_COLUMN",
    "DatasetRef",
    "Partitioned",
    "Projecting",
    "RowEstimating",
    "Sealing",
    "Sink",
    "Source",
]


@runtime_checkable
class Source(Protocol):
    """A stream of record batches."""

    @property
    def schema(self) -> pa.Schema: ...

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Yield the data in order, each batch at most the configured batch size."""
        ...

    def ref(self) -> DatasetRef:
        """The dataset as lineage names it."""
        ...


@runtime_checkable
class Sink(Protocol):
    """A destination that becomes visible only on commit."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def commit(self) -> None:
        """Make the output visible atomically under its final name."""
        ...

    def abort(self) -> None:
        """Remove everything written so far; the final name is left untouched."""
        ...

    def ref(self) -> DatasetRef:
        """The dataset as lineage names it (after commit, with its files)."""
        ...


# -- optional capabilities: a connector declares them by having the member ---------------


@runtime_checkable
class Projecting(Protocol):
    """A source that reads only some columns (Parquet, Arrow: only their column chunks).

    The pipeline's pre-read of the columns a run needs (the ``text`` lexicon) uses it;
    other sources are read whole and the columns selected afterwards.
    """

    def column_batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]: ...


@runtime_checkable
class RowEstimating(Protocol):
    """A source that knows its row count before reading (Parquet footers, PostgreSQL
    statistics), for progress bars; None when it cannot tell."""

    def row_estimate(self) -> int | None: ...


@runtime_checkable
class Partitioned(Protocol):
    """A source read from hive-partitioned folders: the partition columns, so an output
    can keep the input's layout."""

    partition_by: list[str]


@runtime_checkable
class Sealing(Protocol):
    """A sink whose files can be finished before its commit (:meth:`FileSink.seal`):
    lineage hashes them while the commit's fsync runs."""

    def seal(self) -> tuple[Path, ...]: ...
