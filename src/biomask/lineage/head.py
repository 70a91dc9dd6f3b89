"""The signed head of a lineage directory, the writers' lock, and receipts.

A lineage directory is append-only. Each run owns ``runs/<run id>/`` (its manifest and
dossier) and appends to ``audit.jsonl`` and ``openlineage.jsonl``; no run rewrites another
run's files. The one document every writer re-signs is the *head*, ``manifest.json``::

    {"format": "biomask-lineage-manifest", "version": 2, "kind": "head",
     "keyring_id": ..., "signing_key_id": ..., "signing_key_fingerprint": "sha256:...",
     "audit": {"file": "audit.jsonl", "head": "<hash of last line>", "count": N},
     "artifacts": {"openlineage.jsonl": {"sha256", "size"}, "dossier.json": ..., ...},
     "runs": [{"run_id", "command", "status", "manifest": "runs/<id>/manifest.json",
               "sha256", "size"}, ...],
     "current_run": "<id of the last completed run>" | null,
     "last_run": "<id>" | null, "status": "<last run's status>" | "events"}

Before a writer appends anything it holds the directory's lock and checks the head
(:func:`check_head`): signature and signing-key fingerprint against its own keyring, the
whole audit chain (links and MACs), the head and count against the signed ones, and every
signed artifact and run manifest. Any mismatch refuses the run with one line, before a
byte is written.

A *receipt* (``biomask-receipt:v1:<count>:<head>:<manifest sha256>``) pins one state of
the head. Kept outside the directory, it lets ``audit verify --receipt`` detect a directory
rolled back to an older signed state, or one that diverged, which no signature can.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomask.errors import LineageError, VerificationError
from biomask.keys import Keyring
from biomask.lineage import audit
from biomask.lineage._util import canonical, file_digest, sha256_hex
from biomask.lineage.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    read_manifest,
    verify_signature,
)

__all__ = [
    "HEAD_VERSION",
    "RUNS_DIR",
    "DirectoryLock",
    "HeadState",
    "Receipt",
    "check_head",
    "head_document",
    "receipt_of",
]

HEAD_VERSION = 2
RUNS_DIR = "runs"
LOCK_WAIT_ENV = "BIOMASK_LINEAGE_LOCK_WAIT"
"""Seconds a writer waits for another writer's lock before refusing (default 0)."""

_RECEIPT_PREFIX = "biomask-receipt:v1"
_LINEAGE_NAMES = ("audit.jsonl", "openlineage.jsonl", RUNS_DIR, "dossier.json", "manifest.sig")


@dataclass
class HeadState:
    """What the signed head says: runs so far, the current run, the chain state."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    current_run: str | None = None
    status: str = "events"
    last_run: str | None = None
    chain: audit.ChainState = field(default_factory=lambda: audit.ChainState(0, audit.GENESIS))


class DirectoryLock:
    """An exclusive ``flock`` on the lineage directory itself, held for a whole run.

    The lock is taken on the directory's own file descriptor, so it leaves no file behind:
    a refused run leaves the directory byte-identical. A second writer waits up to
    ``timeout`` seconds (``BIOMASK_LINEAGE_LOCK_WAIT``, default 0) and is then refused
    with one line; two writers never interleave their entries.
    """

    def __init__(self, directory: Path, timeout: float | None = None) -> None:
        self.directory = directory
        if timeout is None:
            try:
                timeout = float(os.environ.get(LOCK_WAIT_ENV, "0") or 0)
            except ValueError:
                raise LineageError(f"{LOCK_WAIT_ENV} must be a number of seconds") from None
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise LineageError(
                f"cannot open lineage directory {self.directory}: {exc.strerror}"
            ) from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LineageError(
                        f"lineage directory {self.directory} is locked by another run; "
                        f"nothing was written (set {LOCK_WAIT_ENV}=SECONDS to wait)"
                    ) from None
                time.sleep(0.05)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refuse(directory: Path, problem: str) -> LineageError:
    return LineageError(f"refusing to extend lineage {directory}: {problem}; nothing was written")


def check_head(
    directory: Path, keyring: Keyring, receipt: Receipt | str | None = None
) -> HeadState:
    """Verify the directory's signed head with ``keyring`` before anything is appended.

    A directory without lineage files is fresh. Otherwise the head must be a version 2
    manifest signed by this keyring's signing key (fingerprint and signature), and the
    audit log, the OpenLineage events, the top-level dossier and every run manifest must
    be exactly what it signed (the log's MACs checked with this keyring's chain key).

    With ``receipt`` (one this writer kept from an earlier run), the directory must also
    be that state or one grown from it: a directory rolled back to an older signed copy
    is refused too.

    Raises
    ------
    LineageError
        One line naming the first problem; the caller has written nothing yet.
    """
    want: Receipt | None = None
    if receipt is not None:
        try:
            want = receipt if isinstance(receipt, Receipt) else Receipt.parse(receipt)
        except VerificationError as exc:
            raise LineageError(f"--receipt: {exc}") from None
    present = [n for n in _LINEAGE_NAMES if (directory / n).exists()]
    if not (directory / MANIFEST_FILE).exists():
        if present:
            raise _refuse(
                directory,
                f"{', '.join(present)} present but {MANIFEST_FILE} is missing (the signed "
                "manifest was removed)",
            )
        if want is not None and want.count > 0:
            raise _refuse(
                directory,
                f"the directory is older than the receipt: no signed entries, the receipt "
                f"saw {want.count} (it was emptied or replaced)",
            )
        return HeadState()
    try:
        data, head = read_manifest(directory)
        if canonical(head) != data:
            raise VerificationError(f"{MANIFEST_FILE} is not in canonical form (it was edited)")
        if head.get("version") != HEAD_VERSION or head.get("kind") != "head":
            raise VerificationError(
                f"{MANIFEST_FILE} is lineage format {head.get('version')}, written by an older "
                "biomask; start a new lineage directory"
            )
        fp = head.get("signing_key_fingerprint")
        if fp != keyring.signing_key_fingerprint:
            raise VerificationError(
                f"{MANIFEST_FILE} was signed by another key ({str(fp)[:23]}...), not this "
                f"keyring's ({keyring.signing_key_fingerprint[:23]}...)"
            )
        verify_signature(directory, data, keyring.public_key())
        state, _ = audit.replay_chain(directory, reuse=True, key=keyring.chain_key())
        check_chain_matches(head, state)
        check_signed_files(directory, head)
        if want is not None:
            check_receipt(directory, want, state, data)
    except VerificationError as exc:
        raise _refuse(directory, str(exc)) from None
    return HeadState(
        runs=[dict(r) for r in head.get("runs") or []],
        current_run=head.get("current_run"),
        status=str(head.get("status") or "events"),
        last_run=head.get("last_run"),
        chain=state,
    )


def check_chain_matches(head: dict[str, Any], state: audit.ChainState) -> None:
    """The replayed log's count and head equal the signed ones (a cut or extended log)."""
    signed = head.get("audit") or {}
    if state.count != signed.get("count"):
        raise VerificationError(
            f"{audit.AUDIT_FILE} has {state.count} entries, the signed manifest says "
            f"{signed.get('count')} (entries were removed or added after signing)"
        )
    if state.head != signed.get("head"):
        raise VerificationError(
            f"{audit.AUDIT_FILE}: the hash of the last entry does not match the signed chain "
            "head (entries were edited or replaced)"
        )


def check_signed_files(directory: Path, head: dict[str, Any]) -> int:
    """Every artifact and run manifest the head lists has its signed size and SHA-256."""
    n = 0
    for name, meta in sorted((head.get("artifacts") or {}).items()):
        check_file(directory, {"path": name, **meta}, f"lineage file {name}")
        n += 1
    for run in head.get("runs") or []:
        check_file(
            directory,
            {"path": run.get("manifest"), "sha256": run.get("sha256"), "size": run.get("size")},
            f"run manifest {run.get('manifest')}",
        )
        n += 1
    return n


def check_file(directory: Path, entry: dict[str, Any], what: str) -> None:
    """``entry`` (path, size, sha256) matches the file, or a one-line VerificationError."""
    from biomask.lineage._util import resolve_stored

    path = resolve_stored(str(entry.get("path")), directory)
    if not path.is_file():
        raise VerificationError(f"{what} is missing ({path})")
    try:
        digest, size = file_digest(path)
    except LineageError as exc:
        raise VerificationError(str(exc)) from None
    if size != entry.get("size"):
        raise VerificationError(
            f"{what} has changed: {size} bytes, the signed manifest says {entry.get('size')}"
        )
    if digest != entry.get("sha256"):
        raise VerificationError(f"{what} has changed: its SHA-256 does not match the manifest")


def head_document(
    directory: Path,
    keyring: Keyring,
    state: HeadState,
    chain: audit.ChainState,
    artifacts: tuple[str, ...],
) -> dict[str, Any]:
    """The head manifest for ``state`` after the log reached ``chain``."""
    arts: dict[str, dict[str, Any]] = {}
    for name in artifacts:
        p = directory / name
        if p.is_file():
            digest, size = file_digest(p)
            arts[name] = {"sha256": digest, "size": size}
    return {
        "format": MANIFEST_FORMAT,
        "version": HEAD_VERSION,
        "kind": "head",
        "keyring_id": keyring.keyring_id,
        "signing_key_id": keyring.signing_key_id,
        "signing_key_fingerprint": keyring.signing_key_fingerprint,
        "audit": {"file": audit.AUDIT_FILE, "head": chain.head, "count": chain.count},
        "artifacts": arts,
        "runs": state.runs,
        "current_run": state.current_run,
        "last_run": state.last_run,
        "status": state.status,
    }


@dataclass(frozen=True)
class Receipt:
    """One signed state of a lineage directory: log length and head, manifest digest."""

    count: int
    head: str
    manifest_sha256: str

    def __str__(self) -> str:
        return f"{_RECEIPT_PREFIX}:{self.count}:{self.head}:{self.manifest_sha256}"

    @classmethod
    def parse(cls, text: str) -> Receipt:
        """Parse a receipt string, or the last receipt line of a file's text."""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(_RECEIPT_PREFIX)]
        if not lines:
            raise VerificationError(
                f"not a biomask receipt (expected '{_RECEIPT_PREFIX}:<count>:<head>:<sha256>')"
            )
        parts = lines[-1].split(":")
        try:
            count, head, digest = int(parts[2]), parts[3], parts[4]
            if len(parts) != 5 or count < 0 or len(head) != 64 or len(digest) != 64:
                raise ValueError
            int(head, 16), int(digest, 16)
        except (ValueError, IndexError):
            raise VerificationError(
                f"not a biomask receipt (expected '{_RECEIPT_PREFIX}:<count>:<head>:<sha256>')"
            ) from None
        return cls(count, head, digest)


def receipt_of(directory: Path) -> Receipt:
    """The receipt of the directory as it is now (its signed head's count, head, digest)."""
    data, head = read_manifest(directory)
    signed = head.get("audit") or {}
    return Receipt(int(signed.get("count", 0)), str(signed.get("head")), sha256_hex(data))


def check_receipt(directory: Path, receipt: Receipt, state: audit.ChainState, data: bytes) -> str:
    """The directory is the receipt's state or a later one grown from it; else raise."""
    if state.count < receipt.count:
        raise VerificationError(
            f"the directory is older than the receipt: {state.count} audit entries, the "
            f"receipt saw {receipt.count} (it was rolled back to an earlier copy)"
        )
    if audit.prefix_head(directory, receipt.count) != receipt.head:
        raise VerificationError(
            f"the directory diverged from the receipt: its first {receipt.count} audit "
            "entries are not the ones the receipt saw (the log was rewritten)"
        )
    if state.count == receipt.count and sha256_hex(data) != receipt.manifest_sha256:
        raise VerificationError(
            f"the directory diverged from the receipt: same {receipt.count} entries but "
            f"{MANIFEST_FILE} is not the one the receipt saw (it was re-signed)"
        )
    if state.count == receipt.count:
        return f"the directory is the receipt's state ({receipt.count} entries)"
    return (
        f"the directory extends the receipt's state ({receipt.count} -> {state.count} "
        "entries, same first entries)"
    )
