"""Identity commands as recorded runs: inputs hashed, report in the signed lineage.

Each identity command (``identity calibrate|leakage|filter``, ``split``) is a run like a
masking run: the lineage recorder hashes its inputs at START, its outputs (and its JSON
report) at the end, appends to the hash-chained audit log and signs the manifest. The
command's report (thresholds, FMR, counts, retained fraction, distributions, demographic
shift) travels in the run record to the dossier, where it gets its own section. Ids of
matched people never go to lineage: they are in the pair and removed-row outputs only.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from pathlib import Path
from typing import Any

from biomask.connectors import DatasetRef
from biomask.connectors.atomic import StagedFile
from biomask.errors import ConnectorError
from biomask.keys import Keyring
from biomask.lineage import LineageRecorder, RunRecord
from biomask.policies import Policy

__all__ = ["IdentityRun", "file_ref", "write_report"]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def file_ref(path: Path, table: str | None = None) -> DatasetRef:
    """A dataset reference for a file this run writes (the report, the pair list)."""
    p = path.resolve()
    return DatasetRef(uri=str(path), namespace="file", name=str(p), files=(p,), table=table)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """The report as indented JSON, staged like every file output (temporary name, fsync,
    rename), replacing an earlier report of the same name."""
    staged = StagedFile(path, overwrite=True)
    assert staged.file is not None
    try:
        staged.file.write((json.dumps(report, indent=2, sort_keys=False) + "\n").encode())
    except OSError as exc:
        staged.abort()
        raise ConnectorError(f"cannot write {path}: {exc.strerror or exc}") from exc
    staged.commit()


class IdentityRun:
    """One identity command's lineage: :meth:`start`, then :meth:`complete` or :meth:`fail`.

    Parameters
    ----------
    command:
        ``identity.calibrate``, ``identity.leakage``, ``identity.filter`` or ``split``.
    lineage_dir:
        The lineage directory (earlier runs' chain is extended).
    keyring:
        Signs the manifest (only key ids are written).
    job:
        The dataset name (the policy's, or the input's file name).
    inputs:
        The datasets read, hashed at START.
    """

    def __init__(
        self,
        command: str,
        *,
        lineage_dir: Path,
        keyring: Keyring,
        job: str,
        inputs: list[DatasetRef],
        policy: Policy | None = None,
        receipt: str | None = None,
    ) -> None:
        self.lineage_dir = Path(lineage_dir)
        self.record = RunRecord(
            run_id=str(uuid.uuid4()),
            command=command,
            job=job,
            policy_path=policy.source if policy is not None else None,
            policy_sha256=policy.sha256 if policy is not None else None,
            keyring_id=keyring.keyring_id,
            signing_key_id=keyring.signing_key_id,
            inputs=list(inputs),
        )
        # no policy to the recorder: an identity run masks nothing, so the masking
        # evidence (residual-PII scan of masked columns) has nothing to look at
        self.recorder = LineageRecorder(self.lineage_dir, keyring, self.record, receipt=receipt)

    @property
    def receipt(self) -> str | None:
        """The lineage directory's receipt after this run (keep it outside the directory)."""
        return str(self.recorder.receipt) if self.recorder.receipt is not None else None

    def start(self) -> None:
        self.recorder.start()

    def complete(
        self,
        report: dict[str, Any],
        *,
        rows_in: int,
        rows_out: int,
        rows_set_aside: int = 0,
        reasons: dict[str, int] | None = None,
        outputs: list[DatasetRef] | None = None,
        set_aside: list[DatasetRef] | None = None,
    ) -> None:
        """Record counts, outputs and the report; write COMPLETE and the signed manifest.

        ``rows_set_aside`` (rows moved to a ``.removed`` output) are recorded as the run's
        quarantined rows, so the manifest's conservation check covers them:
        rows out + rows set aside = rows in.
        """
        r = self.record
        r.rows_in, r.rows_out, r.rows_quarantined = rows_in, rows_out, rows_set_aside
        r.quarantine_reasons = dict(reasons or {})
        r.outputs = list(outputs or [])
        r.quarantine = list(set_aside or [])
        r.operator_counts = {r.command: 1}
        r.extra["identity"] = report
        r.ended_at = _now()
        self.recorder.complete()

    def fail(self, error: BaseException) -> None:
        self.record.ended_at = _now()
        self.recorder.fail(error)
