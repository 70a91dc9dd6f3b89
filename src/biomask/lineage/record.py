"""The run record: everything a run tells the lineage writer, and nothing secret.

The pipeline fills a :class:`RunRecord` as it goes; :mod:`biomask.lineage` turns it into
OpenLineage events, the audit chain, the signed manifest and the dossier. It holds counts,
hashes, names and key *ids*, never data values or key material.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from biomask.types import DatasetRef

__all__ = ["ColumnRecord", "RunRecord"]


@dataclass
class ColumnRecord:
    """One output (or dropped) column and how it was produced."""

    table: str
    column: str
    op: str
    masks: bool
    key_id: str | None = None
    domain: str | None = None
    entity: str | None = None
    dropped: bool = False


@dataclass
class RunRecord:
    """What one run did: inputs, outputs, counts, columns, key ids."""

    run_id: str
    command: str  # mask | unmask | erase | rotate | demo
    job: str  # the policy's dataset name
    policy_path: str | None = None
    policy_sha256: str | None = None
    keyring_id: str | None = None
    key_ids: list[str] = field(default_factory=list)
    signing_key_id: str | None = None
    inputs: list[DatasetRef] = field(default_factory=list)
    outputs: list[DatasetRef] = field(default_factory=list)
    quarantine: list[DatasetRef] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    operator_counts: dict[str, int] = field(default_factory=dict)
    text_detections: dict[str, int] = field(default_factory=dict)
    #: per ``email`` column: distinct addresses whose local part was permuted within a
    #: shape of fewer than 10^6 values (distinct tokens, weakly hidden)
    weak_tokens: dict[str, int] = field(default_factory=dict)
    columns: list[ColumnRecord] = field(default_factory=list)
    started_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
    )
    ended_at: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
