"""Source and sink protocols: streams of RecordBatches, chosen by URI.

Connectors know nothing of masking. A source yields ``pyarrow.RecordBatch`` objects of at
most ``batch_size`` rows, so memory is bounded by the batch size, never the input size. A
sink writes under a temporary name and makes the output visible only in :meth:`Sink.commit`
(atomic rename, or one database transaction), so a failed or killed run leaves nothing
under the final name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa

from biomask.types import REJECT_COLUMN, DatasetRef

__all__ = ["REJECT_COLUMN", "DatasetRef", "Sink", "Source"]


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
