"""Source and sink protocols: streams of RecordBatches, chosen by URI.

Connectors know nothing of masking. A source yields ``pyarrow.RecordBatch`` objects of at
most ``batch_size`` rows, so memory is bounded by the batch size, never the input size. A
sink writes under a temporary name and makes the output visible only in :meth:`Sink.commit`
(atomic rename, or one database transaction), so a failed or killed run leaves nothing
under the final name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import pyarrow as pa

__all__ = ["REJECT_COLUMN", "DatasetRef", "Sink", "Source"]

#: Name of the optional string column a source adds for rows it could read but not trust
#: (invalid UTF-8 replaced with U+FFFD, an oversize field, a JSON Lines line that is not
#: valid JSON). Null means the row is fine; otherwise it holds the reason, which names a
#: line/row and column but never a value. The masker masks what it can of such rows and
#: routes them to quarantine; sinks never write this column.
REJECT_COLUMN = "__biomask_reject__"


@dataclass(frozen=True)
class DatasetRef:
    """What lineage needs to know about one dataset, with no credentials in it.

    Attributes
    ----------
    uri:
        Display form of the URI (password removed).
    namespace, name:
        OpenLineage dataset naming (``file`` + absolute path; ``postgres://host:port`` +
        ``db.schema.table``).
    files:
        The files that hold the data (hashed into the manifest); empty for databases.
    table:
        The policy table name this dataset belongs to.
    """

    uri: str
    namespace: str
    name: str
    files: tuple[Path, ...] = ()
    table: str | None = None
    schema: pa.Schema | None = field(default=None, compare=False)


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
