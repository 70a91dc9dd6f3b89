"""The signed manifest: ``manifest.json`` (canonical JSON) and ``manifest.sig`` (Ed25519).

The manifest is the one document an auditor has to trust, and it is signed: it lists the
SHA-256 and size of every input, output and quarantine file, the hashes of the lineage
artifacts (OpenLineage events, dossier), the policy hash, key *ids*, row counts and the
audit chain's head and length. Everything else in the directory is checked against it.

``public_key.pem`` is written beside it for convenience only. A key read from the directory
proves nothing against a forger, who can replace key, manifest and signature together;
an auditor verifies with a public key obtained out of band (``verify(public_key=...)``).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from biomask.errors import LineageError, VerificationError
from biomask.keys import Keyring
from biomask.lineage._util import canonical, read_json, write_atomic

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "PUBLIC_KEY_FILE",
    "SIGNATURE_FILE",
    "load_public_key",
    "read_manifest",
    "verify_signature",
    "write_signed_manifest",
]

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PUBLIC_KEY_FILE = "public_key.pem"
MANIFEST_FORMAT = "biomask-lineage-manifest"


def write_signed_manifest(directory: Path, keyring: Keyring, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (canonical bytes), ``manifest.sig`` and ``public_key.pem``.

    The signature is over the exact bytes of ``manifest.json``; it is written after the
    manifest, so a crash in between leaves a mismatch that verify reports, never a manifest
    that silently verifies against older content.
    """
    data = canonical(manifest)
    signature = keyring.signing_key().sign(data)
    write_atomic(directory / MANIFEST_FILE, data)
    write_atomic(directory / SIGNATURE_FILE, base64.b64encode(signature) + b"\n")
    write_atomic(directory / PUBLIC_KEY_FILE, keyring.public_key_pem())


def read_manifest(directory: Path) -> tuple[bytes, dict[str, Any]]:
    """The manifest's bytes and parsed content.

    Raises
    ------
    VerificationError
        If it is missing or not a biomask manifest.
    """
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise VerificationError(f"{path} not found: not a biomask lineage directory")
    try:
        data = path.read_bytes()
        doc = read_json(path)
    except (OSError, LineageError) as exc:
        raise VerificationError(f"{MANIFEST_FILE} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise VerificationError(f"{MANIFEST_FILE} is not a biomask lineage manifest")
    return data, doc


def load_public_key(key: bytes | Path | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes, raw 32 bytes, base64 text or a PEM file.

    Raises
    ------
    VerificationError
        If the key cannot be read or is not Ed25519.
    """
    if isinstance(key, str | Path):
        try:
            key = Path(key).read_bytes()
        except OSError as exc:
            raise VerificationError(f"cannot read public key {key!s}: {exc.strerror}") from None
    # raw keys are checked before stripping: 32 random bytes may end in a space or newline
    blob = key if len(key) == 32 else key.strip()
    try:
        if blob.startswith(b"-----BEGIN"):
            pub = serialization.load_pem_public_key(blob)
        elif len(blob) == 32:
            pub = Ed25519PublicKey.from_public_bytes(blob)
        else:
            pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(blob, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise VerificationError("the public key is not a valid Ed25519 key") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise VerificationError("the public key is not an Ed25519 key")
    return pub


def verify_signature(directory: Path, data: bytes, public_key: Ed25519PublicKey) -> None:
    """Check ``manifest.sig`` over ``data`` (the manifest's bytes) with ``public_key``.

    Raises
    ------
    VerificationError
        If the signature is missing, malformed, or does not verify: the manifest was
        changed after signing, or it was signed with another key.
    """
    path = directory / SIGNATURE_FILE
    try:
        sig = base64.b64decode(path.read_bytes().strip(), validate=True)
    except OSError:
        raise VerificationError(f"{SIGNATURE_FILE} not found: the manifest is unsigned") from None
    except (ValueError, binascii.Error):
        raise VerificationError(f"{SIGNATURE_FILE} is not base64") from None
    try:
        public_key.verify(sig, data)
    except InvalidSignature:
        raise VerificationError(
            f"{SIGNATURE_FILE} does not verify: {MANIFEST_FILE} was changed after signing, "
            "or it was signed with a different key than the one given"
        ) from None
