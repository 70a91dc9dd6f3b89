"""Sources and sinks that stream Arrow RecordBatches, chosen by URI.

>>> from biomask.connectors import open_source, open_sink
>>> src = open_source("enrolment.csv")                       # doctest: +SKIP
>>> sink = open_sink("masked.parquet", src.schema)           # doctest: +SKIP
>>> for batch in src.batches():                              # doctest: +SKIP
...     sink.write(batch)
>>> sink.commit()                                            # doctest: +SKIP

See ``docs/connectors.md`` for URIs, formats, atomicity and the reject column. URIs are
dispatched by :mod:`.registry`; file formats are registered in :mod:`.formats`.
"""

from biomask.connectors.base import REJECT_COLUMN, DatasetRef, Sink, Source
from biomask.connectors.formats import detect_format
from biomask.connectors.registry import (
    display_uri,
    open_sink,
    open_source,
    open_tables,
    quarantine_uri,
    table_sink_uri,
)

__all__ = [
    "REJECT_COLUMN",
    "DatasetRef",
    "Sink",
    "Source",
    "detect_format",
    "display_uri",
    "open_sink",
    "open_source",
    "open_tables",
    "quarantine_uri",
    "table_sink_uri",
]
