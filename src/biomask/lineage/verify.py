"""Offline verification of a lineage directory.

Order of checks, first failure wins (so the message names the root cause):

1. ``manifest.json`` is present, a biomask manifest, in canonical form;
2. ``manifest.sig`` verifies over its bytes with the public key: the out-of-band key when
   one is given (and then *only* it), else ``public_key.pem`` from the directory, which
   only proves the files are unchanged since signing by *someone* (a forger rewrites key,
   manifest and signature together) and the report says so;
3. the manifest's signing key id matches (when the key came from the keyring's export);
4. ``audit.jsonl`` replays: canonical lines, consecutive ``seq``, each ``prev`` the hash
   of the line before; its head and count equal the signed ones (catches a cut tail);
5. every file listed (inputs, outputs, quarantine) has the signed size and SHA-256;
6. the lineage artifacts (OpenLineage events, dossier) have their signed hashes.

Nothing here opens a socket: the check runs in an air-gapped room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomask.errors import LineageError, VerificationError
from biomask.lineage import audit
from biomask.lineage._util import canonical, file_digest, resolve_stored
from biomask.lineage.manifest import (
    MANIFEST_FILE,
    PUBLIC_KEY_FILE,
    load_public_key,
    read_manifest,
    verify_signature,
)

__all__ = ["VerifyReport", "verify"]


@dataclass
class VerifyReport:
    """The outcome of :func:`verify` (only returned when everything matched).

    Attributes
    ----------
    ok:
        True: every check passed.
    checks:
        One line per check that passed, in order, including how the key was obtained.
    key_source:
        ``given`` (out-of-band key) or ``directory`` (``public_key.pem``: weaker).
    status, run_id:
        The run's status (``completed``, ``failed``, ``started``, ``events``) and id.
    """

    ok: bool
    checks: list[str] = field(default_factory=list)
    key_source: str = "given"
    status: str | None = None
    run_id: str | None = None
    files_checked: int = 0
    audit_entries: int = 0


def verify(directory: Path, *, public_key: bytes | Path | None = None) -> VerifyReport:
    """Verify ``directory`` offline; raise :class:`VerificationError` at the first mismatch.

    Parameters
    ----------
    public_key:
        The signer's Ed25519 public key (PEM bytes or file, raw 32 bytes, or base64),
        obtained out of band. When given, the directory's ``public_key.pem`` is ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VerificationError(f"{directory} is not a directory")
    report = VerifyReport(ok=False)
    data, manifest = read_manifest(directory)
    if canonical(manifest) != data:
        raise VerificationError(f"{MANIFEST_FILE} is not in canonical form (it was edited)")
    report.checks.append(f"{MANIFEST_FILE}: present, canonical JSON")

    if public_key is not None:
        key = load_public_key(public_key)
        report.key_source = "given"
        source = "the public key given (out of band)"
    else:
        pem = directory / PUBLIC_KEY_FILE
        if not pem.is_file():
            raise VerificationError(
                f"no public key given and {PUBLIC_KEY_FILE} not found in {directory}"
            )
        key = load_public_key(pem)
        report.key_source = "directory"
        source = f"{PUBLIC_KEY_FILE} from the directory itself"
    verify_signature(directory, data, key)
    report.checks.append(f"manifest.sig: valid Ed25519 signature with {source}")
    if report.key_source == "directory":
        report.checks.append(
            "WARNING: the key came from the directory being verified; this proves the files "
            "match what the holder of that key signed, not who signed them. A forger can "
            "replace key, manifest and signature together: verify with the signer's public "
            "key obtained out of band (public_key=... / --public-key)."
        )
    report.status = str(manifest.get("status"))
    run = manifest.get("run") or {}
    report.run_id = run.get("run_id")
    if manifest.get("signing_key_id"):
        report.checks.append(f"signing key id in manifest: {manifest['signing_key_id']}")

    state, _ = audit.replay_chain(directory)
    signed = manifest.get("audit") or {}
    if state.count != signed.get("count"):
        raise VerificationError(
            f"{audit.AUDIT_FILE} has {state.count} entries, the signed manifest says "
            f"{signed.get('count')} (the log was cut off or extended)"
        )
    if state.head != signed.get("head"):
        raise VerificationError(
            f"{audit.AUDIT_FILE}: the hash of the last entry does not match the signed chain "
            "head (the last entry was edited or replaced)"
        )
    report.audit_entries = state.count
    report.checks.append(f"{audit.AUDIT_FILE}: {state.count} entries, chain and head match")

    n = 0
    for ds in manifest.get("datasets") or []:
        for f in ds.get("files") or []:
            _check_file(directory, f, f"{ds.get('role')} file {f.get('path')}")
            n += 1
    report.files_checked = n
    report.checks.append(f"data files: {n} file(s) match their signed size and SHA-256")

    arts: dict[str, Any] = manifest.get("artifacts") or {}
    for name in sorted(arts):
        _check_file(directory, {"path": name, **arts[name]}, f"lineage file {name}")
    if arts:
        report.checks.append(f"lineage files: {', '.join(sorted(arts))} match")
    report.checks.append(f"run status: {report.status}")
    report.ok = True
    return report


def _check_file(directory: Path, entry: dict[str, Any], what: str) -> None:
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
