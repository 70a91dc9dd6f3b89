"""The bottom floor: small types and names every part of biomask shares, defined once.

Connectors produce :class:`DatasetRef` values, lineage records them; sources may add the
:data:`REJECT_COLUMN`, the Masker reads it and writes :data:`REASON_COLUMN`; keys,
connectors and lineage print URIs through :func:`display_uri`; the template cipher and the
training feed read binary columns through :func:`binary_parts`. Everything here imports
only the standard library, numpy and pyarrow, so any package may import it without
pulling another part of biomask in (the direction ``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

__all__ = ["REASON_COLUMN", "REJECT_COLUMN", "DatasetRef", "binary_parts", "display_uri"]

#: Name of the optional string column a source adds for rows it could read but not trust
#: (invalid UTF-8 replaced with U+FFFD, an oversize field, a JSON Lines line that is not
#: valid JSON). Null means the row is fine; otherwise it holds the reason, which names a
#: line/row and column but never a value. The masker masks what it can of such rows and
#: routes them to quarantine; sinks never write this column.
REJECT_COLUMN = "__biomask_reject__"

#: The quarantine output's extra column: why the row could not be masked (never a value).
REASON_COLUMN = "_biomask_reason"


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


def display_uri(uri: str) -> str:
    """The URI with any password removed (userinfo and ``password=`` query parameter).

    Used for every message, repr and lineage record, so credentials given on the command
    line never reach logs or the audit trail.
    """
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{hostport}" if user else hostport
        query = parts.query
        if query:
            pairs = [
                (k, v)
                for k, v in parse_qsl(query, keep_blank_values=True)
                if k.lower() not in ("password", "passfile", "sslpassword")
            ]
            query = urlencode(pairs, safe="/,.")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        # Unparseable: show only the scheme rather than risk echoing a secret.
        return uri.split("://", 1)[0] + "://…"


def binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Data buffer and row offsets (int64) of a binary/large_binary array, zero-copy.

    For code that works on a whole binary column at once (template ciphertexts) instead
    of one Python ``bytes`` per row.
    """
    n = len(arr)
    bufs = arr.buffers()
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offs = np.frombuffer(bufs[1], width)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return data, offs
