"""Small shared helpers of the lineage writer: canonical JSON, file hashing, atomic writes.

Everything an auditor re-computes (audit entries, the manifest) is serialized as canonical
JSON per RFC 8785, so the same content always has the same bytes and therefore the same
hash and signature, whatever Python version or dict order produced it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO

import rfc8785

from biomask.errors import LineageError

__all__ = [
    "PRODUCER",
    "canonical",
    "file_digest",
    "make_private_dir",
    "now_iso",
    "open_private",
    "read_json",
    "resolve_stored",
    "sha256_hex",
    "stored_path",
    "write_atomic",
]

PRODUCER = "https://biomask.dev/producer/biomask"
"""OpenLineage ``producer`` URI: stable, so canonical facets stay byte-identical."""

_CHUNK = 1 << 20


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of ``obj``.

    Canonical bytes are what gets hashed and signed: a verifier re-serializing the parsed
    document gets the same bytes, so any change of content (not of formatting) is caught.
    """
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:  # pragma: no cover - programming error
        raise LineageError(f"lineage document cannot be canonicalized: {exc}") from None


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB chunks.

    Streaming keeps memory constant however large the output files are.
    """
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise LineageError(f"cannot read {path} to hash it: {exc.strerror}") from None
    return h.hexdigest(), size


def stored_path(path: Path, directory: Path) -> str:
    """How a file is named in the manifest: relative to the lineage directory if possible.

    Relative paths let an auditor receive the output and its lineage directory together
    (the default ``<output>.lineage`` sits beside the output) and verify them anywhere.
    """
    p = path.resolve()
    try:
        return Path(os.path.relpath(p, directory.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return str(p)


def resolve_stored(stored: str, directory: Path) -> Path:
    """Inverse of :func:`stored_path`."""
    p = Path(stored)
    return p if p.is_absolute() else directory / p


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A reader (or a crash) never sees a half-written manifest, signature or dossier.
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open_private(tmp) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise LineageError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def open_private(path: Path, *, append: bool = False) -> BinaryIO:
    """Open ``path`` for writing, created with mode 0600 (owner only).

    Lineage names files, runs and key ids: an operator's business, not every local user's.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    return os.fdopen(fd, "ab" if append else "wb")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing one is kept as is."""
    try:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for p in reversed(missing):  # parents created here are private too
            p.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LineageError(f"cannot create lineage directory {path}: {exc.strerror}") from None


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every failure into a :class:`LineageError`."""
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise LineageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise LineageError(f"{path} is not valid JSON") from None


def now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds (the pipeline's format)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
