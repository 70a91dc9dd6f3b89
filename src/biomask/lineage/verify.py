"""Offline verification of a lineage directory.

Order of checks, first failure wins (so the message names the root cause):

1. ``manifest.json`` (the signed head, :mod:`biomask.lineage.head`) is present, a version 2
   biomask manifest, in canonical form;
2. the trusted key: the out-of-band public key given (``--public-key``), whose fingerprint
   must equal the manifest's ``signing_key_fingerprint``; or, only when asked to
   (``--trust-embedded-key``), ``public_key.pem`` from the directory, which proves the
   files are unchanged since *someone* signed them, not who (the report says so);
3. ``manifest.sig`` verifies over the manifest's bytes with that key;
4. ``audit.jsonl`` replays: canonical lines, consecutive ``seq``, each ``prev`` the hash of
   the line before (and each MAC, when the keyring is given); its head and count equal the
   signed ones (catches a cut, extended or rewritten log);
5. the signed artifacts (OpenLineage events, dossier) and every run manifest (with its
   dossier) have their signed hashes;
6. the data files: for every output dataset, the files of the last completed run that
   wrote it, and the inputs of the current run, have their signed size and SHA-256;
7. with a receipt, the directory is the receipt's state or grew from it (no rollback).

Nothing here opens a socket: the check runs in an air-gapped room.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomask.errors import VerificationError
from biomask.keys import Keyring
from biomask.keys.keyring import fingerprint
from biomask.lineage import audit
from biomask.lineage._util import canonical, resolve_stored, sha256_hex
from biomask.lineage.head import (
    HEAD_VERSION,
    Receipt,
    check_chain_matches,
    check_file,
    check_receipt,
)
from biomask.lineage.manifest import (
    MANIFEST_FILE,
    PUBLIC_KEY_FILE,
    load_public_key,
    read_manifest,
    verify_signature,
)

__all__ = ["VerifyReport", "verify"]

EMBEDDED_KEY_NOTE = (
    "integrity only, not origin: the key came from the directory being verified, and a "
    "forger can replace key, manifest and signature together; verify with the signer's "
    "public key obtained out of band (--public-key)"
)


@dataclass
class VerifyReport:
    """The outcome of :func:`verify` (only returned when everything matched).

    Attributes
    ----------
    ok:
        True: every check passed.
    checks:
        ``(check, result)`` for each check that passed, in order.
    key_source:
        ``given`` (out-of-band key) or ``directory`` (``--trust-embedded-key``: weaker).
    status, run_id:
        The last run's status (``completed``, ``failed``, ``started``, ``events``) and id.
    current_run:
        The last completed run, whose outputs are current.
    outputs:
        The output files that verified (absolute): what a training feed may read.
    receipt:
        This directory's receipt now (keep it outside the directory).
    """

    ok: bool
    checks: list[tuple[str, str]] = field(default_factory=list)
    key_source: str = "given"
    status: str | None = None
    run_id: str | None = None
    current_run: str | None = None
    files_checked: int = 0
    audit_entries: int = 0
    outputs: list[Path] = field(default_factory=list)
    receipt: str | None = None
    notes: list[str] = field(default_factory=list)


def verify(
    directory: Path,
    *,
    public_key: bytes | Path | None = None,
    trust_embedded_key: bool = False,
    receipt: Receipt | str | None = None,
    keyring: Keyring | None = None,
) -> VerifyReport:
    """Verify ``directory`` offline; raise :class:`VerificationError` at the first mismatch.

    Parameters
    ----------
    public_key:
        The signer's Ed25519 public key (PEM bytes or file, raw 32 bytes, or base64),
        obtained out of band. Required unless ``trust_embedded_key``.
    trust_embedded_key:
        Use ``public_key.pem`` from the directory: proves integrity only, not origin.
    receipt:
        A receipt printed by an earlier run (string or :class:`Receipt`): the directory
        must be that state or a later one grown from it.
    keyring:
        The writer's keyring: the audit entries' MACs are checked too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VerificationError(f"{directory} is not a directory")
    if public_key is None and not trust_embedded_key:
        raise VerificationError(
            "no trusted public key: pass --public-key PEM (the signer's key, obtained out "
            "of band) or --trust-embedded-key (integrity only, not origin)"
        )
    report = VerifyReport(ok=False)
    data, head = read_manifest(directory)
    if canonical(head) != data:
        raise VerificationError(f"{MANIFEST_FILE} is not in canonical form (it was edited)")
    if head.get("version") != HEAD_VERSION or head.get("kind") != "head":
        raise VerificationError(
            f"{MANIFEST_FILE} is lineage format {head.get('version')}, written by an older "
            "biomask: verify it with that version"
        )
    report.checks.append((MANIFEST_FILE, "present, canonical JSON, format 2"))

    if public_key is not None:
        key = load_public_key(public_key)
        report.key_source = "given"
        source = "the public key given"
    else:
        key = load_public_key(directory / PUBLIC_KEY_FILE)
        report.key_source = "directory"
        source = f"{PUBLIC_KEY_FILE} from the directory (integrity only, not origin)"
        report.notes.append(EMBEDDED_KEY_NOTE)
    from cryptography.hazmat.primitives import serialization

    fp = fingerprint(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    if head.get("signing_key_fingerprint") != fp:
        raise VerificationError(
            f"the manifest names signing key {head.get('signing_key_id')} "
            f"({str(head.get('signing_key_fingerprint'))[:23]}...), not the key given "
            f"({fp[:23]}...)"
        )
    report.checks.append(("signing key", f"{head.get('signing_key_id')} = {fp[:23]}..."))
    verify_signature(directory, data, key)
    report.checks.append(("manifest.sig", f"valid Ed25519 signature with {source}"))

    state, _ = audit.replay_chain(
        directory, key=keyring.chain_key() if keyring is not None else None
    )
    check_chain_matches(head, state)
    report.audit_entries = state.count
    macs = "links and MACs" if keyring is not None else "links (MACs need --keyring)"
    report.checks.append((audit.AUDIT_FILE, f"{state.count} entries; {macs}, head and count match"))

    arts: dict[str, Any] = head.get("artifacts") or {}
    for name in sorted(arts):
        check_file(directory, {"path": name, **arts[name]}, f"lineage file {name}")
    runs: dict[str, dict[str, Any]] = {}
    for run in head.get("runs") or []:
        rid = str(run.get("run_id"))
        what = f"run manifest {run.get('manifest')}"
        check_file(
            directory,
            {"path": run.get("manifest"), "sha256": run.get("sha256"), "size": run.get("size")},
            what,
        )
        path = resolve_stored(str(run.get("manifest")), directory)
        runs[rid] = json.loads(path.read_bytes())
        for name, meta in sorted((runs[rid].get("artifacts") or {}).items()):
            check_file(directory, meta, f"lineage file {meta.get('path', name)}")
    listed = ", ".join(sorted(arts))
    report.checks.append(
        ("lineage files", f"{listed}{', ' if listed else ''}{len(runs)} run manifest(s) match")
    )

    n = 0
    latest: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
    current = head.get("current_run")
    for rid, m in runs.items():
        if m.get("status") != "completed":
            continue
        for ds in m.get("datasets") or []:
            role = str(ds.get("role"))
            if role == "input" and rid != current:
                continue
            latest[(role, str(ds.get("namespace")), str(ds.get("name")))] = (rid, ds)
    for (role, _, _), (_rid, ds) in sorted(latest.items()):
        for f in ds.get("files") or []:
            check_file(directory, f, f"{role} file {f.get('path')}")
            n += 1
            if role == "output":
                report.outputs.append(resolve_stored(str(f.get("path")), directory).resolve())
    report.files_checked = n
    report.checks.append(("data files", f"{n} file(s) match their signed size and SHA-256"))

    if receipt is not None:
        r = receipt if isinstance(receipt, Receipt) else Receipt.parse(receipt)
        report.checks.append(("receipt", check_receipt(directory, r, state, data)))
    report.status = str(head.get("status"))
    report.run_id = head.get("last_run")
    report.current_run = current
    report.receipt = str(Receipt(state.count, state.head, sha256_hex(data)))
    last = f"{report.status} (run {report.run_id})" if report.run_id else str(report.status)
    if current and current != report.run_id:
        last += f"; current outputs from run {current}"
    report.checks.append(("last run", last))
    report.ok = True
    return report
