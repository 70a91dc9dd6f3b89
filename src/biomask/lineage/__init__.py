"""Lineage: OpenLineage events, hash-chained audit log, signed manifest, dossier, verify.

The pipeline drives a :class:`LineageRecorder`; commands that change keys or erase a
subject call :func:`record_event`; auditors call :func:`verify` and :func:`export`.
Nothing here ever writes a data value or key material (see ``docs/lineage.md``).
"""

from biomask.lineage.dossier import REGULATION_REFS, export
from biomask.lineage.record import ColumnRecord, RunRecord
from biomask.lineage.recorder import LineageRecorder, record_event
from biomask.lineage.verify import VerifyReport, verify

__all__ = [
    "REGULATION_REFS",
    "ColumnRecord",
    "LineageRecorder",
    "RunRecord",
    "VerifyReport",
    "export",
    "record_event",
    "verify",
]
