"""The keyring: master keys wrapped under a passphrase, key ids, rotation, derived keys.

File format (JSON, version 2)::

    {
      "format": "biomask-keyring", "version": 2, "keyring_id": "<16 hex>",
      "kdf": {"name": "scrypt", "salt": "<b64>", "n": 131072, "r": 8, "p": 1},
      "primary": "<8 hex key id>",
      "token_key": "<8 hex key id>",
      "entity_key": "<8 hex key id>",
      "keys": [{"id": "<8 hex>", "created": "<ISO 8601>", "wrapped": "<b64 nonce|ct>"}],
      "signing": {"id": "<8 hex>", "wrapped": "<b64>", "public": "<b64 raw Ed25519>"},
      "mac": "<hex HMAC-SHA256 over the canonical JSON of every other field>"
    }

Each master key (32 random bytes) and the Ed25519 lineage signing key are wrapped with
AES-256-GCM under a key-encryption key derived from ``BIOMASK_PASSPHRASE`` with scrypt
(N = 2^17, r = 8: 128 MiB per guess); the associated data binds each wrapped key to the
file version, the keyring id and its key id, so wrapped keys cannot be swapped between
entries or keyrings, nor a version 2 file be passed off as version 1. The ``mac`` covers
the whole document except itself (RFC 8785 canonical JSON), so the primary key id, the
key list, the dates and any field a later version adds cannot be changed without the
passphrase: rolling ``primary`` back to an old key is refused.

Version 1 files (scrypt N = 2^15, no ``mac``) still open; ``keys rotate`` rewrites them
as version 2. KDF parameters read from a file are bounded (:data:`KDF_BOUNDS`), so a file
cannot make opening it take minutes or gigabytes. ``create`` and ``rotate`` hold a lock
file (``.<name>.lock`` beside the keyring), and ``rotate`` refuses when the file changed
since it was opened: two rotations never silently drop one another's key.

Rotation adds a new primary and keeps the old keys for reading. Domain keys are derived
with HKDF-SHA256 from a master key and the purpose and domain name, so a leaked domain key
exposes no other domain.

Token keys (tokens, pseudonyms, date offsets: everything that must
agree between runs for joins to survive) derive from the ``token_key`` master key, not from
the primary: rotating the encryption keys changes no token. Only
:meth:`Keyring.rotate_tokens` moves ``token_key``, and from then on new outputs no longer
join earlier ones. A keyring file without the field (written before it existed) uses its
first (oldest) key.

Subject key names (the ids of per-subject template keys, ``e:<entity>:<name>``) must
outlive even :meth:`Keyring.rotate_tokens`, or ``erase`` would miss the keys a subject got
before it. They derive from the ``entity_key`` master key, pinned when the keyring is
created (its first token key) and never moved by ``rotate`` or ``rotate_tokens``. A
keyring file without the field pins its token key (its first key when it has none
either), so the names an existing key store holds stay the names. The header MAC covers
the field like every other.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from rfc8785 import dumps as _canonical

from biomask.errors import KeyringError
from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import hkdf

__all__ = ["KDF_BOUNDS", "PASSPHRASE_ENV", "Keyring"]

PASSPHRASE_ENV = "BIOMASK_PASSPHRASE"
_FORMAT = "biomask-keyring"
_VERSION = 2
_SCRYPT_N = 2**17
"""scrypt cost of new keyrings: N = 2^17, r = 8 (128 MiB, about 0.4 s per guess)."""

KDF_BOUNDS: dict[str, tuple[int, int]] = {"n": (2**14, 2**18), "r": (1, 16), "p": (1, 4)}
"""Accepted scrypt parameters of a keyring file (inclusive). The lower bound keeps guessing
costly; the upper one keeps opening a file under about a second and 256 MiB, whatever the
file says."""


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
        token_key: str | None = None,
        entity_key: str | None = None,
        view: bool = False,
    ) -> None:
        self._keyring_id = keyring_id
        #: the master key token keys derive from (default: the first, oldest key)
        self._token_key = next(iter(masters)) if token_key is None else token_key
        #: the master key subject key names derive from: pinned, never rotated (default:
        #: the token key, which is where names came from before the field existed)
        self._entity_key = self._token_key if entity_key is None else entity_key
        #: a view of another keyring (:meth:`tokens_under`): it shares that keyring's keys,
        #: so it must never add one
        self._view = view
        self._masters = masters
        self._created = created
        self._primary = primary
        self._signing_id = signing_id
        self._signing_seed = signing_seed
        self.path = path
        self._kdf = kdf
        self._kek = kek
        #: SHA-256 of the file as opened: ``rotate`` refuses if another writer changed it
        self._opened_digest: str | None = None
        #: the passphrase, held only for a version 1 / weak-KDF file until ``rotate``
        self._upgrade_pw: str | None = None

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
        with _locked(p):
            if p.exists():
                raise KeyringError(f"keyring {p} already exists; refusing to overwrite it")
            ring = cls.ephemeral()
            ring._kdf = _new_kdf()
            ring._kek = _derive_kek(pw, ring._kdf, p)
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
            raw = p.read_bytes()
            doc = json.loads(raw)
            version = doc.get("version")
            if doc.get("format") != _FORMAT or version not in (1, _VERSION):
                raise ValueError("format")
            kdf = dict(doc["kdf"])
            ring_id = str(doc["keyring_id"])
            entries = list(doc["keys"])
            primary = str(doc["primary"])
            token_key = doc.get("token_key")
            entity_key = doc.get("entity_key")
            signing = dict(doc["signing"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{p} is not a biomask keyring (unreadable or corrupt)") from exc
        kek = _derive_kek(pw, kdf, p)
        prefix = _aad_prefix(int(version))
        masters: dict[str, bytes] = {}
        created: dict[str, str] = {}
        try:
            for e in entries:
                kid = str(e["id"])
                masters[kid] = _unwrap(kek, _unb64(e["wrapped"]), f"{prefix}{ring_id}/{kid}")
                created[kid] = str(e.get("created", ""))
            seed = _unwrap(
                kek, _unb64(signing["wrapped"]), f"{prefix}{ring_id}/sign/{signing['id']}"
            )
        except InvalidTag:
            raise KeyringError(f"wrong passphrase for keyring {p}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{p} is not a biomask keyring (unreadable or corrupt)") from exc
        if version == _VERSION:
            body = {k: v for k, v in doc.items() if k != "mac"}
            want = _header_mac(kek, body)
            if not isinstance(doc.get("mac"), str) or not hmac.compare_digest(want, doc["mac"]):
                raise KeyringError(
                    f"{p} was changed without the passphrase: its header MAC does not match "
                    "(primary key, key list, dates or another field edited or rolled back)"
                )
        if primary not in masters:
            raise KeyringError(f"{p} is corrupt: its primary key id is not among its keys")
        if token_key is not None and str(token_key) not in masters:
            raise KeyringError(f"{p} is corrupt: its token key id is not among its keys")
        if entity_key is not None and str(entity_key) not in masters:
            raise KeyringError(f"{p} is corrupt: its entity key id is not among its keys")
        ring = cls(
            keyring_id=ring_id,
            masters=masters,
            created=created,
            primary=primary,
            signing_id=str(signing["id"]),
            signing_seed=seed,
            path=p,
            kdf=kdf,
            kek=kek,
            token_key=None if token_key is None else str(token_key),
            entity_key=None if entity_key is None else str(entity_key),
        )
        ring._opened_digest = hashlib.sha256(raw).hexdigest()
        if version != _VERSION or int(kdf["n"]) < _SCRYPT_N:
            # an old file: ``rotate`` rewrites it with the current KDF, which needs the
            # passphrase once more (kept only on such a keyring, only until it is upgraded)
            ring._upgrade_pw = pw
        return ring

    def save(self, *, new: bool = False) -> None:
        """Write the keyring file atomically (temporary file, fsync, rename), mode 0600."""
        if self.path is None or self._kek is None or self._kdf is None:
            raise KeyringError("an ephemeral keyring has no file to save to")
        kek = self._kek
        prefix = _aad_prefix(_VERSION)
        doc: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "keyring_id": self._keyring_id,
            "kdf": self._kdf,
            "primary": self._primary,
            "token_key": self._token_key,
            "entity_key": self._entity_key,
            "keys": [
                {
                    "id": kid,
                    "created": self._created.get(kid, ""),
                    "wrapped": _b64(_wrap(kek, secret, f"{prefix}{self._keyring_id}/{kid}")),
                }
                for kid, secret in self._masters.items()
            ],
            "signing": {
                "id": self._signing_id,
                "wrapped": _b64(
                    _wrap(
                        kek,
                        self._signing_seed,
                        f"{prefix}{self._keyring_id}/sign/{self._signing_id}",
                    )
                ),
                "public": _b64(self.public_key_raw()),
            },
        }
        doc["mac"] = _header_mac(kek, doc)
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
        self._opened_digest = hashlib.sha256(data).hexdigest()

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
        """Add a new primary key (old keys stay for reading) and save; returns the new id.

        The token key stays where it is: no token changes (see :meth:`rotate_tokens`).
        """
        return self._rotate(tokens=False)

    def rotate_tokens(self) -> str:
        """Add a new key and make it both the primary and the token key; save; its id.

        Every token, pseudonym and date offset changes: outputs masked from now on no
        longer join outputs masked before. Subject key names do not change (they derive
        from :attr:`entity_key_id`), so one subject keeps one template key. Old keys stay,
        so earlier reversible tokens still unmask and earlier templates still decrypt.
        """
        return self._rotate(tokens=True)

    @property
    def token_key_id(self) -> str:
        """Id of the master key that token keys derive from (see :meth:`derive_token`)."""
        return self._token_key

    @property
    def entity_key_id(self) -> str:
        """Id of the master key that subject key names derive from; never rotated.

        The name of a subject's template key is the subject's token computed under this
        key (:meth:`tokens_under`), so one subject keeps one key through every
        :meth:`rotate` and :meth:`rotate_tokens`, and ``erase`` reaches all of it.
        """
        return self._entity_key

    def tokens_under(self, key_id: str) -> Keyring:
        """This keyring as seen by token operators whose token key is ``key_id``.

        What subject key names (``key_id`` = :attr:`entity_key_id`) and the inversion of a
        token made under an older token key need: the same master keys, another token key.
        The view cannot sign, save or rotate (it has no passphrase or signing key); its
        ``path`` is the keyring's, which locates the default key store.
        """
        if key_id not in self._masters:
            raise KeyringError(
                f"key id {key_id} is not in this keyring (the data was masked with another keyring)"
            )
        return Keyring(
            keyring_id=self._keyring_id,
            masters=self._masters,
            created=self._created,
            primary=self._primary,
            signing_id="",
            signing_seed=b"",
            path=self.path,
            kdf=None,
            kek=None,
            token_key=key_id,
            entity_key=self._entity_key,
            view=True,
        )

    def derive_token(self, purpose: str, domain: str = "", key_id: str | None = None) -> KeyHandle:
        """A token key: :meth:`derive` from the token key (not the primary) by default.

        Tokens must agree across runs for joins to survive, so they never follow
        :meth:`rotate`; ``key_id`` selects another key (``unmask`` of data masked under
        an earlier token key).
        """
        return self.derive(purpose, domain, self._token_key if key_id is None else key_id)

    def _rotate(self, *, tokens: bool) -> str:
        if self._view:
            raise KeyringError("a keyring view cannot rotate: rotate the keyring it came from")
        if self.path is None:
            kid = self._add_primary()
            if tokens:
                self._token_key = kid
            return kid
        with _locked(self.path):
            try:
                now = hashlib.sha256(self.path.read_bytes()).hexdigest()
            except OSError as exc:
                raise KeyringError(f"cannot read keyring {self.path}: {exc.strerror}") from None
            if self._opened_digest is not None and now != self._opened_digest:
                raise KeyringError(
                    f"keyring {self.path} changed since it was opened (another rotation?); "
                    "open it again and retry"
                )
            if self._upgrade_pw is not None:  # version 1 or a weak KDF: use the current KDF
                self._kdf = _new_kdf()
                self._kek = _derive_kek(self._upgrade_pw, self._kdf, self.path)
                self._upgrade_pw = None
            kid = self._add_primary()
            if tokens:
                self._token_key = kid
            self.save()
        return kid

    def _add_primary(self) -> str:
        kid = _new_key_id(set(self._masters))
        self._masters[kid] = secrets.token_bytes(32)
        self._created[kid] = _now()
        self._primary = kid
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
        return Ed25519PrivateKey.from_private_bytes(self._seed())

    def _seed(self) -> bytes:
        if not self._signing_seed:
            raise KeyringError(
                "this is a worker's key handle: it masks, but cannot sign lineage or open "
                "the keyring file"
            )
        return self._signing_seed

    def public_key(self) -> Ed25519PublicKey:
        """The public half, for auditors (``biomask keys export-public``)."""
        return self.signing_key().public_key()

    @property
    def signing_key_fingerprint(self) -> str:
        """``sha256:<hex>`` of the raw public signing key: what a verifier compares.

        Unlike :attr:`signing_key_id` (a random label), it is computed from the key itself,
        so an auditor holding only the PEM can check that a manifest names *this* key.
        """
        return fingerprint(self.public_key_raw())

    def chain_key(self) -> KeyHandle:
        """The key of the lineage audit chain's MACs, derived from the signing key.

        Derived from the signing key (which ``rotate`` keeps), not from a master key: the
        chain outlives rotations. Whoever lacks the keyring cannot compute it, so cannot
        rewrite the log and recompute its links.
        """
        return KeyHandle(
            hkdf(self._seed(), "biomask/v1/lineage/audit-chain"),
            self._signing_id,
            "lineage/audit-chain",
        )

    # -- worker handles -------------------------------------------------------------------
    def worker_handle(self, token: str | None = None) -> tuple[bytes, str]:
        """Seal this keyring's master keys for distributed workers: ``(sealed, token)``.

        ``sealed`` (AES-256-GCM under a fresh random key) travels with the work (Ray actor
        arguments); ``token`` (that random key, base64) travels separately, in the
        workers' environment. Together they give a worker the master keys it needs to mask,
        and nothing more: not the passphrase, not the lineage signing key, not any key
        added by a later rotation. :meth:`from_worker_handle` opens it.

        ``token``: seal under a token made earlier (one of this function's, or 32 random
        bytes in base64) when the workers' environment was fixed before the work was
        known, as a Spark session's is.
        """
        doc = {
            "keyring_id": self._keyring_id,
            "primary": self._primary,
            "token_key": self._token_key,
            "entity_key": self._entity_key,
            "keys": {kid: _b64(k) for kid, k in self._masters.items()},
            "created": self._created,
        }
        if token is not None:
            try:
                key = _unb64(token)
            except ValueError:
                key = b""
            if len(key) != 32:
                raise KeyringError("a worker token is 32 random bytes in base64")
        else:
            key = AESGCM.generate_key(bit_length=256)
        sealed = _wrap(key, json.dumps(doc).encode(), f"worker/{self._keyring_id}")
        return self._keyring_id.encode() + b"." + sealed, _b64(key)

    @classmethod
    def from_worker_handle(
        cls, sealed: bytes, token: str, path: str | os.PathLike[str] | None = None
    ) -> Keyring:
        """The keyring a worker masks with, from :meth:`worker_handle`'s two halves.

        ``path`` is the keyring file's path, used only to locate its default key store;
        the file is not opened. The result cannot sign lineage or be saved.
        """
        try:
            ring_id, blob = sealed.split(b".", 1)
            doc = json.loads(_unwrap(_unb64(token), blob, f"worker/{ring_id.decode()}"))
            masters = {str(k): _unb64(v) for k, v in doc["keys"].items()}
            primary = str(doc["primary"])
            token_key = doc.get("token_key")
            entity_key = doc.get("entity_key")
            for kid in (token_key, entity_key):
                if kid is not None and str(kid) not in masters:
                    raise ValueError("token key")
        except (InvalidTag, ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise KeyringError(
                "the worker's key handle does not open with its token (a token from another run?)"
            ) from None
        return cls(
            keyring_id=ring_id.decode(),
            masters=masters,
            created={str(k): str(v) for k, v in dict(doc.get("created") or {}).items()},
            primary=primary,
            signing_id="",
            signing_seed=b"",
            path=Path(path) if path is not None else None,
            kdf=None,
            kek=None,
            token_key=None if token_key is None else str(token_key),
            entity_key=None if entity_key is None else str(entity_key),
        )

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


def fingerprint(public_raw: bytes) -> str:
    """``sha256:<hex>`` of a raw 32-byte Ed25519 public key."""
    return "sha256:" + hashlib.sha256(public_raw).hexdigest()


def _new_kdf() -> dict[str, Any]:
    return {"name": "scrypt", "salt": _b64(secrets.token_bytes(16)), "n": _SCRYPT_N, "r": 8, "p": 1}


def _aad_prefix(version: int) -> str:
    # version 1 files bound wrapped keys to "<ring>/<kid>"; version 2 adds its version,
    # so a version 2 file rewritten as version 1 (to drop its MAC) no longer unwraps
    return "" if version == 1 else f"v{version}/"


def _header_mac(kek: bytes, body: dict[str, Any]) -> str:
    key = hkdf(kek, "biomask/v1/keyring/header-mac")
    return hmac.new(key, _canonical(body), "sha256").hexdigest()


def _derive_kek(passphrase: str, kdf: dict[str, Any], path: Path | None = None) -> bytes:
    where = f"keyring {path}" if path is not None else "keyring"
    if kdf.get("name") != "scrypt":
        raise KeyringError(f"{where}: unsupported KDF {str(kdf.get('name'))[:20]!r} (scrypt)")
    params: dict[str, int] = {}
    for name, (lo, hi) in KDF_BOUNDS.items():
        v = kdf.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise KeyringError(
                f"{where}: scrypt parameter {name}={str(v)[:20]} is outside {lo}..{hi}"
            )
        params[name] = v
    if params["n"] & (params["n"] - 1):
        raise KeyringError(f"{where}: scrypt parameter n={params['n']} is not a power of two")
    try:
        salt = _unb64(str(kdf["salt"]))
    except (KeyError, ValueError) as exc:
        raise KeyringError(f"{where}: the KDF salt is not base64") from exc
    if not 16 <= len(salt) <= 64:
        raise KeyringError(f"{where}: the KDF salt must be 16 to 64 bytes")
    return Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"]).derive(
        passphrase.encode("utf-8")
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``path`` (fcntl): one creator or rotator at a time.

    A second writer waits up to ten seconds, then is refused with one line; the lock file
    stays (mode 0600, empty) so that no two writers ever race to create it.
    """
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise KeyringError(f"cannot lock keyring {path}: {exc.strerror}") from None
    try:
        _flock(fd, timeout=10.0, what=f"keyring {path}")
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _flock(fd: int, *, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise KeyringError(
                    f"{what} is locked by another writer; retry when it is done"
                ) from None
            time.sleep(0.05)


def _wrap(kek: bytes, secret: bytes, aad: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek).encrypt(nonce, secret, aad.encode())


def _unwrap(kek: bytes, blob: bytes, aad: str) -> bytes:
    return AESGCM(kek).decrypt(blob[:12], blob[12:], aad.encode())
