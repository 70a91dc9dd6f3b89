"""The keyring: master keys wrapped under a passphrase, key ids, rotation, derived keys.

File format (JSON, version 1)::

    {
      "format": "biomask-keyring", "version": 1, "keyring_id": "<16 hex>",
      "kdf": {"name": "scrypt", "salt": "<b64>", "n": 32768, "r": 8, "p": 1},
      "primary": "<8 hex key id>",
      "keys": [{"id": "<8 hex>", "created": "<ISO 8601>", "wrapped": "<b64 nonce|ct>"}],
      "signing": {"id": "<8 hex>", "wrapped": "<b64>", "public": "<b64 raw Ed25519>"}
    }

Each master key (32 random bytes) and the Ed25519 lineage signing key are wrapped with
AES-256-GCM under a key-encryption key derived from ``BIOMASK_PASSPHRASE`` with scrypt; the
associated data binds each wrapped key to the keyring id and its key id, so wrapped keys
cannot be swapped between entries or keyrings. Rotation adds a new primary and keeps the
old keys for reading. Domain keys are derived with HKDF-SHA256 from a master key and the
purpose and domain name, so a leaked domain key exposes no other domain.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import secrets
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from biomask.errors import KeyringError
from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import hkdf

__all__ = ["PASSPHRASE_ENV", "Keyring"]

PASSPHRASE_ENV = "BIOMASK_PASSPHRASE"
_FORMAT = "biomask-keyring"
_SCRYPT_N = 2**15


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


def _new_key_id(existing: set[str]) -> str:
    while True:
        kid = secrets.token_hex(4)
        if kid not in existing:
            return kid


def _passphrase(passphrase: str | None, path: Path, action: str) -> str:
    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        raise KeyringError(
            f"cannot {action} keyring {path}: set the passphrase in the {PASSPHRASE_ENV} "
            "environment variable"
        )
    return passphrase


class Keyring:
    """Master keys and the lineage signing key of one deployment.

    Open one with :meth:`open` (existing file) or :meth:`create` (new file); tests and the
    demo use :meth:`ephemeral`. A keyring refuses to be pickled: each process opens it from
    the file with the passphrase.
    """

    def __init__(
        self,
        *,
        keyring_id: str,
        masters: dict[str, bytes],
        created: dict[str, str],
        primary: str,
        signing_id: str,
        signing_seed: bytes,
        path: Path | None,
        kdf: dict[str, Any] | None,
        kek: bytes | None,
    ) -> None:
        self._keyring_id = keyring_id
        self._masters = masters
        self._created = created
        self._primary = primary
        self._signing_id = signing_id
        self._signing_seed = signing_seed
        self.path = path
        self._kdf = kdf
        self._kek = kek

    # -- construction -------------------------------------------------------------------
    @classmethod
    def ephemeral(cls) -> Keyring:
        """A throw-away in-memory keyring (the demo and tests); nothing is written."""
        kid = secrets.token_hex(4)
        return cls(
            keyring_id=secrets.token_hex(8),
            masters={kid: secrets.token_bytes(32)},
            created={kid: _now()},
            primary=kid,
            signing_id=secrets.token_hex(4),
            signing_seed=secrets.token_bytes(32),
            path=None,
            kdf=None,
            kek=None,
        )

    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str | None = None) -> Keyring:
        """Create a new keyring file; refuses to overwrite an existing one."""
        p = Path(path)
        pw = _passphrase(passphrase, p, "create")
        if p.exists():
            raise KeyringError(f"keyring {p} already exists; refusing to overwrite it")
        ring = cls.ephemeral()
        salt = secrets.token_bytes(16)
        ring._kdf = {"name": "scrypt", "salt": _b64(salt), "n": _SCRYPT_N, "r": 8, "p": 1}
        ring._kek = _derive_kek(pw, ring._kdf)
        ring.path = p
        ring.save(new=True)
        return ring

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | None = None) -> Keyring:
        """Open a keyring file with the passphrase (argument or ``BIOMASK_PASSPHRASE``)."""
        p = Path(path)
        if not p.is_file():
            raise KeyringError(
                f"keyring {p} not found; create one with 'biomask keys init --keyring {p}'"
            )
        pw = _passphrase(passphrase, p, "open")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT or doc.get("version") != 1:
                raise ValueError("format")
            kdf = dict(doc["kdf"])
            ring_id = str(doc["keyring_id"])
            entries = list(doc["keys"])
            primary = str(doc["primary"])
            signing = dict(doc["signing"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{p} is not a biomask keyring (unreadable or corrupt)") from exc
        kek = _derive_kek(pw, kdf)
        masters: dict[str, bytes] = {}
        created: dict[str, str] = {}
        try:
            for e in entries:
                kid = str(e["id"])
                masters[kid] = _unwrap(kek, _unb64(e["wrapped"]), f"{ring_id}/{kid}")
                created[kid] = str(e.get("created", ""))
            seed = _unwrap(kek, _unb64(signing["wrapped"]), f"{ring_id}/sign/{signing['id']}")
        except InvalidTag:
            raise KeyringError(f"wrong passphrase for keyring {p}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{p} is not a biomask keyring (unreadable or corrupt)") from exc
        if primary not in masters:
            raise KeyringError(f"{p} is corrupt: its primary key id is not among its keys")
        return cls(
            keyring_id=ring_id,
            masters=masters,
            created=created,
            primary=primary,
            signing_id=str(signing["id"]),
            signing_seed=seed,
            path=p,
            kdf=kdf,
            kek=kek,
        )

    def save(self, *, new: bool = False) -> None:
        """Write the keyring file atomically (temporary file, fsync, rename), mode 0600."""
        if self.path is None or self._kek is None or self._kdf is None:
            raise KeyringError("an ephemeral keyring has no file to save to")
        kek = self._kek
        doc = {
            "format": _FORMAT,
            "version": 1,
            "keyring_id": self._keyring_id,
            "kdf": self._kdf,
            "primary": self._primary,
            "keys": [
                {
                    "id": kid,
                    "created": self._created.get(kid, ""),
                    "wrapped": _b64(_wrap(kek, secret, f"{self._keyring_id}/{kid}")),
                }
                for kid, secret in self._masters.items()
            ],
            "signing": {
                "id": self._signing_id,
                "wrapped": _b64(
                    _wrap(kek, self._signing_seed, f"{self._keyring_id}/sign/{self._signing_id}")
                ),
                "public": _b64(self.public_key_raw()),
            },
        }
        data = json.dumps(doc, indent=2).encode() + b"\n"
        tmp = self.path.with_name(f".{self.path.name}.tmp-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if new and self.path.exists():
                raise KeyringError(f"keyring {self.path} already exists; refusing to overwrite it")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise KeyringError(f"cannot write keyring {self.path}: {exc.strerror}") from None
        finally:
            if tmp.exists():
                tmp.unlink()

    # -- keys ---------------------------------------------------------------------------
    @property
    def keyring_id(self) -> str:
        """Public id of this keyring (goes into lineage; not secret)."""
        return self._keyring_id

    @property
    def primary_key_id(self) -> str:
        """Id of the key that new runs use."""
        return self._primary

    @property
    def key_ids(self) -> list[str]:
        """All key ids, oldest first; old ones stay for reading after rotation."""
        return list(self._masters)

    def rotate(self) -> str:
        """Add a new primary key (old keys stay for reading) and save; returns the new id."""
        kid = _new_key_id(set(self._masters))
        self._masters[kid] = secrets.token_bytes(32)
        self._created[kid] = _now()
        self._primary = kid
        if self.path is not None:
            self.save()
        return kid

    def derive(self, purpose: str, domain: str = "", key_id: str | None = None) -> KeyHandle:
        """A key for one purpose and domain, derived with HKDF from a master key.

        Parameters
        ----------
        purpose:
            e.g. ``"tokenize"``, ``"ff1"``, ``"date_shift"``, ``"kek"``.
        domain:
            The token domain or entity name (``"subject"``, ``"person"``).
        key_id:
            Which master key; the primary when omitted.
        """
        kid = self._primary if key_id is None else key_id
        if kid not in self._masters:
            raise KeyringError(
                f"key id {kid} is not in this keyring (the data was masked with another keyring)"
            )
        label = f"{purpose}/{domain}"
        return KeyHandle(hkdf(self._masters[kid], f"biomask/v1/{label}"), kid, label)

    # -- signing ------------------------------------------------------------------------
    @property
    def signing_key_id(self) -> str:
        """Id of the Ed25519 lineage signing key."""
        return self._signing_id

    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs lineage manifests."""
        return Ed25519PrivateKey.from_private_bytes(self._signing_seed)

    def public_key(self) -> Ed25519PublicKey:
        """The public half, for auditors (``biomask keys export-public``)."""
        return self.signing_key().public_key()

    def public_key_raw(self) -> bytes:
        return self.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_key_pem(self) -> bytes:
        return self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- hygiene ------------------------------------------------------------------------
    def __repr__(self) -> str:
        where = str(self.path) if self.path else "ephemeral"
        return f"Keyring({where}, primary={self._primary}, keys={len(self._masters)})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a biomask Keyring cannot be pickled: open it in each process with "
            "Keyring.open(path) and BIOMASK_PASSPHRASE"
        )


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _derive_kek(passphrase: str, kdf: dict[str, Any]) -> bytes:
    if kdf.get("name") != "scrypt":
        raise KeyringError("unsupported keyring KDF")
    return Scrypt(
        salt=_unb64(kdf["salt"]), length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])
    ).derive(passphrase.encode("utf-8"))


def _wrap(kek: bytes, secret: bytes, aad: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek).encrypt(nonce, secret, aad.encode())


def _unwrap(kek: bytes, blob: bytes, aad: str) -> bytes:
    return AESGCM(kek).decrypt(blob[:12], blob[12:], aad.encode())
