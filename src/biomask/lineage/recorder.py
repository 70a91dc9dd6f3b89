"""The lineage recorder the pipeline drives, and standalone audit events.

A lineage directory holds, for every run recorded in it::

    openlineage.jsonl        START and COMPLETE|FAIL RunEvents, appended
    audit.jsonl              keyed hash-chained audit entries, appended
    runs/<run id>/manifest.json   the run's own manifest: file hashes, counts, key ids
    runs/<run id>/dossier.json|.html   its EU AI Act evidence
    dossier.json|.html       a copy of the last *completed* run's dossier
    manifest.json            the signed head (:mod:`biomask.lineage.head`): chain head and
                             count, every run manifest's digest, the artifacts' digests
    manifest.sig             Ed25519 signature (base64) over manifest.json's bytes
    public_key.pem           the signing key's public half (convenience; not a trust anchor)

The directory is append-only: a run writes only its own ``runs/<id>/`` and appends to the
two logs; it holds the directory's lock from :meth:`LineageRecorder.start` to the end and
checks the signed head before its first write. A failed run records its failure as its
own entry: the last completed run (``current_run``) and its outputs stay valid. The head
is signed at START too: a run killed before COMPLETE leaves a directory that verifies and
says the run never finished.
"""

from __future__ import annotations

import hashlib
import io
import os
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa

from biomask.errors import BiomaskError, LineageError
from biomask.keys import Keyring
from biomask.lineage import audit
from biomask.lineage._util import (
    canonical,
    file_digest,
    make_private_dir,
    now_iso,
    sha256_hex,
    stored_path,
    write_atomic,
)
from biomask.lineage.dossier import (
    DOSSIER_HTML,
    DOSSIER_JSON,
    build_dossier,
    render_html,
)
from biomask.lineage.events import OPENLINEAGE_FILE, build_event, emit, ol_run_id
from biomask.lineage.evidence import EvidenceCollector
from biomask.lineage.head import (
    RUNS_DIR,
    DirectoryLock,
    HeadState,
    Receipt,
    check_head,
    head_document,
    receipt_of,
)
from biomask.lineage.manifest import MANIFEST_FORMAT, write_signed_manifest
from biomask.lineage.record import RunRecord
from biomask.policies import Policy
from biomask.types import DatasetRef

__all__ = [
    "RUN_VERSION",
    "LineageRecorder",
    "record_event",
    "safe_error_message",
    "stack_locations",
]

ARTIFACTS = (OPENLINEAGE_FILE, DOSSIER_JSON, DOSSIER_HTML)
"""Top-level lineage files whose hashes the head signs (audit.jsonl: by its chain head)."""

RUN_VERSION = 2
"""Format version of a run manifest (``runs/<id>/manifest.json``)."""


def safe_error_message(error: BaseException) -> str:
    """The error text that may be written to lineage.

    biomask errors are written as they are: their messages are designed to carry no data
    value. Any other exception (a library's) may quote a value, so only its type is kept.
    """
    if isinstance(error, BiomaskError):
        return str(error)
    return f"{type(error).__qualname__} (message withheld: not a biomask error, may quote data)"


def stack_locations(error: BaseException) -> str:
    """The traceback as ``file:line:function`` lines only: no source text, no locals."""
    lines = [type(error).__qualname__]
    for fs in traceback.extract_tb(error.__traceback__):
        lines.append(f"  at {fs.filename}:{fs.lineno}:{fs.name}")
    return "\n".join(lines)


def _audit_kind(command: str) -> str:
    # Reading originals back is an access to personal data: Art. 10(5)(c)-style evidence.
    return "access" if command == "unmask" else command


def _dataset_digest(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a dataset file, as :func:`file_digest` gives them.

    Read into one reused buffer (:func:`hashlib.file_digest`) rather than a fresh
    megabyte per chunk: a tenth less CPU on the run's largest files, the same digest.
    """
    try:
        with path.open("rb", buffering=0) as fh:
            return _handle_digest(fh)
    except OSError as exc:
        raise LineageError(f"cannot read {path} to hash it: {exc.strerror}") from None


def _handle_digest(fh: io.FileIO) -> tuple[str, int]:
    """SHA-256 (hex) and size of the file open as ``fh``, read from its start."""
    fh.seek(0)
    digest = hashlib.file_digest(fh, "sha256")
    return digest.hexdigest(), fh.tell()


def _dataset_version(files: list[dict[str, Any]]) -> str | None:
    """One version string per dataset: its file's SHA-256, or a hash over all its files."""
    if not files:
        return None
    if len(files) == 1:
        return str(files[0]["sha256"])
    pairs = sorted([Path(f["path"]).name, f["sha256"]] for f in files)
    return sha256_hex(canonical(pairs))


class LineageRecorder:
    """Writes one run's lineage; the pipeline calls start, observe_*, then complete or fail.

    Parameters
    ----------
    directory:
        The lineage directory (created if needed; earlier runs' entries are kept as they
        are, after checking them against the signed head).
    keyring:
        Signs the head and keys the audit chain; only key *ids* are written.
    record:
        The run record the pipeline fills before calling :meth:`complete` / :meth:`fail`.
    policy:
        Names the quasi-identifier and masked columns for the evidence collectors.
    lock_timeout:
        Seconds to wait for another writer's lock (default: ``BIOMASK_LINEAGE_LOCK_WAIT``,
        else 0: refuse at once).
    receipt:
        A receipt kept from an earlier run: the directory must be that state or a later
        one grown from it (catches a rollback to an older signed copy).
    """

    def __init__(
        self,
        directory: Path,
        keyring: Keyring,
        record: RunRecord,
        *,
        policy: Policy | None = None,
        lock_timeout: float | None = None,
        receipt: Receipt | str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.keyring = keyring
        self.record = record
        self.policy = policy
        self.evidence = EvidenceCollector(policy, scan=record.command != "unmask")
        self._started = False
        self._finished = False
        self._lock = DirectoryLock(self.directory, lock_timeout)
        self._head = HeadState()
        self._expect = receipt
        #: the receipt of the directory after this run's last write
        self.receipt: Receipt | None = None
        #: (device, inode) -> (size, mtime_ns, sha256) of files hashed before the end
        self._known: dict[tuple[int, int], tuple[int, int, str]] = {}
        #: the evidence, when :meth:`conclude_evidence` computed it before the end
        self._evidence: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"LineageRecorder({self.directory}, run={self.record.run_id})"

    @property
    def run_dir(self) -> Path:
        """``runs/<run id>/``: the only directory this run writes files into."""
        return self.directory / RUNS_DIR / ol_run_id(self.record.run_id)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the directory, check its signed head, then write START and a run manifest.

        Raises
        ------
        LineageError
            Another run holds the lock, or the directory does not match its signed head
            (edited, cut or extended log, removed manifest, another signing key): nothing
            has been written.
        """
        if self._started:
            raise LineageError("lineage recorder already started")
        make_private_dir(self.directory)
        self._lock.acquire()
        try:
            self._head = check_head(self.directory, self.keyring, self._expect)
            r = self.record
            if r.keyring_id is None:
                r.keyring_id = self.keyring.keyring_id
            if r.signing_key_id is None:
                r.signing_key_id = self.keyring.signing_key_id
            make_private_dir(self.run_dir)
            emit(self.directory, build_event("START", r, event_time=r.started_at))
            self._started = True
            manifest = self._write_run_manifest("started", self._hash_datasets(inputs_only=True))
            chain = self._audit("start")
            self._write_head("started", manifest, chain)
        except BaseException:
            self._lock.release()
            raise

    def prehash(self, path: Path) -> None:
        """Hash a finished file now rather than at the end of the run.

        A Ray driver calls this for each part file as its unit finishes, while the workers
        still mask: the end of the run then only checks that the file is unchanged. The
        key is the file's device and inode (a rename into place keeps both), checked with
        its size and modification time at the end; a file that changed is hashed again.
        """
        self._digest(path)

    def prehash_open(self, fh: io.FileIO) -> None:
        """Hash a finished file through a handle opened on it, as :meth:`prehash` does.

        The pipeline opens a sealed output before its commit renames it into place and
        hashes it while the commit's fsync runs: the handle follows the inode through the
        rename, which a path would not.
        """
        st = os.fstat(fh.fileno())
        self._remember(st, *_handle_digest(fh))

    def _remember(self, st: os.stat_result, digest: str, size: int) -> None:
        """Cache ``digest`` for the file ``st`` describes (stat taken before hashing),
        unless the file's size changed while it was read."""
        if size == st.st_size:
            self._known[(st.st_dev, st.st_ino)] = (size, st.st_mtime_ns, digest)

    def _digest(self, path: Path) -> tuple[str, int]:
        """SHA-256 and size of ``path``, from the cache when the file is unchanged.

        The cache keeps the size and mtime seen *before* hashing, so a file written to
        while or after it was hashed no longer matches and is hashed again.
        """
        try:
            st = path.stat()
        except OSError:
            return _dataset_digest(path)  # names the file in its error
        known = self._known.get((st.st_dev, st.st_ino))
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2], known[0]
        digest, size = _dataset_digest(path)
        self._remember(st, digest, size)
        return digest, size

    def conclude_evidence(self) -> None:
        """Compute the run's evidence now (residual-PII scan included), once every batch
        was observed, so that it overlaps with the last writes; :meth:`complete` then
        uses it instead of computing it at the end."""
        self._evidence = self.evidence.finish()

    def observe_input(self, table: str, batch: pa.RecordBatch) -> None:
        """Evidence before masking: kept QI counts, keyed hashes of masked values."""
        self.evidence.observe_input(table, batch)

    def observe_output(self, table: str, batch: pa.RecordBatch) -> None:
        """Evidence after masking: QI counts and combinations, residual-PII candidates."""
        self.evidence.observe_output(table, batch)

    def complete(self) -> None:
        """Hash the files; write COMPLETE, audit entry, dossier, run manifest, signed head."""
        self._finish("completed")

    def fail(self, error: BaseException) -> None:
        """Record the failure as this run's own entry (FAIL event, audit entry, manifest).

        Earlier runs' files and the last completed run's status are left as they are.
        Never raises on top of the run's own error unless lineage itself cannot be written.
        """
        self._finish("failed", error)

    # -- internals -------------------------------------------------------------------------
    def _finish(self, status: str, error: BaseException | None = None) -> None:
        if not self._started:
            self.start()
        if self._finished:
            raise LineageError("lineage recorder already finished")
        self._finished = True
        try:
            self._finish_locked(status, error)
        finally:
            self._lock.release()

    def _finish_locked(self, status: str, error: BaseException | None) -> None:
        r = self.record
        if r.ended_at is None:
            r.ended_at = now_iso()
        files = self._hash_datasets(inputs_only=False)
        versions = {
            (d["namespace"], d["name"]): v
            for d in files
            if (v := _dataset_version(d["files"])) is not None
        }
        err: tuple[str, str] | None = None
        if error is not None:
            err = (safe_error_message(error), stack_locations(error))
            r.error = err[0]
        state = "COMPLETE" if error is None else "FAIL"
        emit(
            self.directory,
            build_event(state, r, event_time=r.ended_at, versions=versions, error=err),
        )
        extra: dict[str, str | int] = {
            "rows_in": r.rows_in,
            "rows_out": r.rows_out,
            "rows_quarantined": r.rows_quarantined,
        }
        if err is not None:
            extra["error"] = err[0]
        chain = self._audit("complete" if error is None else "fail", extra)
        _, entries = audit.replay_chain(self.directory, reuse=True, key=self.keyring.chain_key())
        dossier = build_dossier(
            r,
            status=status,
            datasets=files,
            evidence=self._evidence if self._evidence is not None else self.evidence.finish(),
            audit_entries=entries,
            policy=self.policy,
        )
        dossier_json = canonical(dossier)
        dossier_html = render_html(dossier).encode("utf-8")
        write_atomic(self.run_dir / DOSSIER_JSON, dossier_json)
        write_atomic(self.run_dir / DOSSIER_HTML, dossier_html)
        manifest = self._write_run_manifest(status, files)
        if error is None:  # the top-level dossier shows the last completed run only
            write_atomic(self.directory / DOSSIER_JSON, dossier_json)
            write_atomic(self.directory / DOSSIER_HTML, dossier_html)
        self._write_head(status, manifest, chain)

    def _audit(self, phase: str, extra: dict[str, str | int] | None = None) -> audit.ChainState:
        r = self.record
        details: dict[str, str | int] = {
            "phase": phase,
            "command": r.command,
            "run_id": ol_run_id(r.run_id),
            "job": r.job,
            "policy_sha256": r.policy_sha256 or "",
            "keyring_id": r.keyring_id or "",
            "key_ids": ",".join(sorted(set(r.key_ids))),
            "signing_key_id": r.signing_key_id or "",
        }
        details.update(extra or {})
        return audit.append_entry(
            self.directory, _audit_kind(r.command), details, self.keyring.chain_key()
        )

    def _hash_datasets(self, *, inputs_only: bool) -> list[dict[str, Any]]:
        r = self.record
        groups: list[tuple[str, list[DatasetRef]]] = [("input", r.inputs)]
        if not inputs_only:
            groups += [("output", r.outputs), ("quarantine", r.quarantine)]
        out: list[dict[str, Any]] = []
        for role, refs in groups:
            for ref in refs:
                files = []
                for f in ref.files:
                    p = Path(f)
                    if not p.is_file():  # e.g. an aborted output on FAIL
                        continue
                    digest, size = self._digest(p)  # inputs hashed at START: once
                    files.append(
                        {"path": stored_path(p, self.directory), "sha256": digest, "size": size}
                    )
                out.append(
                    {
                        "role": role,
                        "table": ref.table,
                        "uri": ref.uri,
                        "namespace": ref.namespace,
                        "name": ref.name,
                        "files": sorted(files, key=lambda x: x["path"]),
                    }
                )
        return out

    def _write_run_manifest(self, status: str, files: list[dict[str, Any]]) -> dict[str, Any]:
        """Write ``runs/<id>/manifest.json``; return its head entry (path, digest, size)."""
        r = self.record
        artifacts: dict[str, dict[str, Any]] = {}
        for name in (DOSSIER_JSON, DOSSIER_HTML):
            p = self.run_dir / name
            if p.is_file():
                digest, size = file_digest(p)
                artifacts[name] = {
                    "path": stored_path(p, self.directory),
                    "sha256": digest,
                    "size": size,
                }
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": RUN_VERSION,
            "kind": "run",
            "status": status,
            "run": {
                "run_id": ol_run_id(r.run_id),
                "command": r.command,
                "job": r.job,
                "started_at": r.started_at,
                "ended_at": r.ended_at,
                "error": r.error if status == "failed" else None,
            },
            "policy": {"path": r.policy_path, "sha256": r.policy_sha256},
            "keyring_id": r.keyring_id,
            "key_ids": sorted(set(r.key_ids)),
            "signing_key_id": self.keyring.signing_key_id,
            "datasets": files,
            "counts": {
                "rows_in": r.rows_in,
                "rows_out": r.rows_out,
                "rows_quarantined": r.rows_quarantined,
                "quarantine_reasons": dict(sorted(r.quarantine_reasons.items())),
                "operator_counts": dict(sorted(r.operator_counts.items())),
                "text_detections": dict(sorted(r.text_detections.items())),
                "weak_tokens": dict(sorted(r.weak_tokens.items())),
            },
            "artifacts": artifacts,
        }
        data = canonical(manifest)
        path = self.run_dir / "manifest.json"
        write_atomic(path, data)
        return {
            "run_id": ol_run_id(r.run_id),
            "command": r.command,
            "status": status,
            "manifest": stored_path(path, self.directory),
            "sha256": sha256_hex(data),
            "size": len(data),
        }

    def _write_head(self, status: str, entry: dict[str, Any], chain: audit.ChainState) -> None:
        h = self._head
        h.runs = [x for x in h.runs if x.get("run_id") != entry["run_id"]] + [entry]
        h.status = status
        h.last_run = entry["run_id"]
        if status == "completed":
            h.current_run = entry["run_id"]
        write_signed_manifest(
            self.directory,
            self.keyring,
            head_document(self.directory, self.keyring, h, chain, ARTIFACTS),
        )
        self.receipt = receipt_of(self.directory)


def record_event(
    directory: Path,
    keyring: Keyring,
    kind: str,
    details: dict[str, str | int],
    *,
    lock_timeout: float | None = None,
) -> Receipt:
    """Append a standalone audit event (key rotation, erase, rekey) and re-sign the head.

    Holds the directory's lock and checks the signed head first, as a run does
    (:func:`~biomask.lineage.head.check_head`): re-signing a tampered directory would make
    the tampering verify. The runs and their manifests are left as they are; only the
    chain head and count change. A fresh directory gets a head holding just the chain.

    Parameters
    ----------
    kind:
        e.g. ``key.rotate``, ``erase`` (details carry the subject *token* only), ``key.rekey``.
    details:
        Flat strings and integers: ids, tokens, counts; never a data value or key.

    Returns
    -------
    Receipt
        The directory's receipt after the event.
    """
    directory = Path(directory)
    make_private_dir(directory)
    with DirectoryLock(directory, lock_timeout):
        state = check_head(directory, keyring)
        chain = audit.append_entry(directory, kind, dict(details), keyring.chain_key())
        write_signed_manifest(
            directory, keyring, head_document(directory, keyring, state, chain, ARTIFACTS)
        )
        return receipt_of(directory)
