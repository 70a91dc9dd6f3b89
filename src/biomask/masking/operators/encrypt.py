"""The ``encrypt`` operator: AES-256-GCM envelope encryption of biometric templates.

Ciphertext layout (version 2; version 1 has the same layout), one ``binary`` value per
row::

    b"BMT" | version u8 (=2) | key_id 4 bytes | dek_id_len u8 | dek_id | nonce 12 | ct+tag

- ``key_id`` is the keyring key (8 hex digits, stored as 4 bytes) that was primary when the
  row was written; the data key itself is unwrapped with the key id its key-store row names,
  which ``biomask rekey`` may have moved on to a newer key;
- ``dek_id`` (ASCII/UTF-8, at most 255 bytes) names the data key (DEK) in the key store:
  ``run:<random>`` for the key one run shares over the column, or ``e:<entity>:<token>``
  with ``per_entity_key: true`` (``<token>`` is the row's *masked* entity token);
- the nonce is random (``os.urandom``, never derived from the value): equal templates give
  different ciphertexts. This column is the one documented exception to the Masker's
  byte-for-byte determinism; tokens and every other column stay deterministic;
- the associated data (version 2) is the length-prefixed parts (4-byte big-endian length,
  then the bytes) ``biomask/template/v2``, dataset, table, column, the row's entity token,
  the row's ``row_key`` token (empty without ``row_key``) and the header, so a ciphertext
  moved to another row (with ``row_key``), subject, column, table or dataset, or given
  another header, does not decrypt. Version 1 (``|``-joined, no row key) still decrypts;
  ``biomask rekey --upgrade`` rewrites it as version 2.

A DEK is 32 random bytes, wrapped with AES-256-GCM under the key-encryption key
``keyring.derive("kek", "templates", key_id)`` (associated data: the dek_id). Wrapped DEKs
live in a key store (:mod:`biomask.keys.keystore`), never raw and never in the data files:
rotation re-wraps them (``biomask rekey``, :func:`rewrap`) without touching a template, and
deleting one subject's DEK (``biomask erase``) makes every copy of their templates
unreadable.

Failures: a swapped, truncated or modified ciphertext, or a wrong key, raises
:class:`~biomask.errors.DecryptionError` for the whole run, whose only message is
"decryption failed". A row whose subject key was erased is not an attack but a known fact,
so unmask quarantines it ("subject key erased") and decrypts the rest.

Speed: no per-row Python. Headers, nonces, offsets and validity are numpy over the column;
the AES-GCM work of a whole batch is one call into :mod:`biomask.keys.aead` (OpenSSL on a
few threads without the GIL), reading Arrow's buffers and writing one output buffer, from
which the output column is built without per-row byte objects.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biomask.errors import DecryptionError, KeyringError
from biomask.keys import Keyring, aead
from biomask.keys.keystore import KeyStore, Row, default_keystore_uri, open_keystore
from biomask.masking.registry import Binding, Operator, OperatorContext, register
from biomask.masking.services import RunNeeds, RunServices
from biomask.policies.models import EncryptOp

__all__ = ["HEADER_FIXED", "MAGIC", "MAGIC_V1", "Encrypt", "keystore_for", "rewrap"]

#: magic and format version (2: length-prefixed associated data with the row key)
MAGIC = b"BMT\x02"
#: the first format: "|"-joined associated data, no row key (still decrypts)
MAGIC_V1 = b"BMT\x01"
#: bytes before the dek_id: magic+version (4), key id (4), dek_id length (1)
HEADER_FIXED = 9
_NONCE = 12
_TAG = 16
_KEK_DOMAIN = "templates"
_STORES: dict[str, KeyStore] = {}
_STORES_LOCK = threading.Lock()


def keystore_for(services: RunServices, keyring: Keyring, *, create: bool = True) -> KeyStore:
    """The key store a run uses: ``services.keystore_uri`` or the keyring's default.

    Stores are cached per URI in the process, so the operators of every column (and every
    Masker of a multi-table run) share one connection. Only masking creates a store
    (``create``); reading one that does not exist is an error.
    """
    uri = services.keystore_uri or default_keystore_uri(keyring.path, keyring.keyring_id)
    if "://" not in uri and not uri.startswith("memory:"):
        uri = str(Path(uri).resolve())
    with _STORES_LOCK:
        store = _STORES.get(uri)
        if store is None:
            store = open_keystore(uri, create=create)
            _STORES[uri] = store
    return store


class _Keks:
    """A keyring's key-encryption keys for one operation, each derived once.

    A derivation is an HKDF (about 10 µs), and one batch with per-subject keys wraps or
    unwraps a DEK per subject, all under one or two KEKs. Not kept beyond the operation:
    key material lives no longer than it is used.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._by_id: dict[str, AESGCM] = {}

    def _kek(self, key_id: str) -> AESGCM:
        kek = self._by_id.get(key_id)
        if kek is None:
            kek = AESGCM(self.keyring.derive("kek", _KEK_DOMAIN, key_id)._secret())
            self._by_id[key_id] = kek
        return kek

    def wrap(self, dek_id: str, dek: bytes) -> Row:
        kid = self.keyring.primary_key_id
        nonce = secrets.token_bytes(_NONCE)
        return dek_id, kid, nonce + self._kek(kid).encrypt(nonce, dek, dek_id.encode())

    def unwrap(self, dek_id: str, key_id: str, wrapped: bytes) -> bytes:
        try:
            return self._kek(key_id).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], dek_id.encode())
        except (InvalidTag, ValueError, KeyringError):  # KeyringError: a key id we do not hold
            raise DecryptionError() from None


def rewrap(store: KeyStore, keyring: Keyring) -> int:
    """Re-wrap every data key not under the primary key; returns how many changed.

    Template ciphertexts name their data key by id, so none of them is touched: after
    ``biomask keys rotate`` and ``biomask rekey`` the old master key is needed only for
    ciphertexts' tokens and FF1 values, not for templates.

    Raises
    ------
    DecryptionError
        A stored key does not unwrap with this keyring (another keyring's store, or a
        modified row); nothing is changed then.
    """
    primary = keyring.primary_key_id
    keks = _Keks(keyring)
    changed = [
        keks.wrap(dek_id, keks.unwrap(dek_id, key_id, wrapped))
        for dek_id, key_id, wrapped in store.rows()
        if key_id != primary
    ]
    if changed:
        store.replace(changed)
    return len(changed)


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{t.value_type}>[{t.list_size}]"
    if pa.types.is_large_list(t):
        return f"large_list<{t.value_type}>"
    if pa.types.is_list(t):
        return f"list<{t.value_type}>"
    return str(t)


def _parse_type(name: str) -> pa.DataType:
    """Inverse of :func:`_type_name`; an unknown name is treated as tampering."""
    try:
        if name.startswith("fixed_size_list<"):
            inner, size = name[len("fixed_size_list<") :].split(">[")
            return pa.list_(pa.type_for_alias(inner), int(size.rstrip("]")))
        if name.startswith("large_list<"):
            return pa.large_list(pa.type_for_alias(name[len("large_list<") : -1]))
        if name.startswith("list<"):
            return pa.list_(pa.type_for_alias(name[len("list<") : -1]))
        if name in ("binary", "large_binary"):
            return pa.type_for_alias(name)
    except (ValueError, TypeError):
        raise DecryptionError() from None
    raise DecryptionError()


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Data buffer and row offsets (int64) of a binary/large_binary array, zero-copy."""
    n = len(arr)
    bufs = arr.buffers()
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offs = np.frombuffer(bufs[1], width)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return data, offs


class _Recycler:
    """Output buffers of one batch handed back for the next once Arrow lets them go.

    A template column's output is one buffer of batch size (200 MB for 100k templates).
    Fresh memory of that size faults in every page on first write, and on a virtual
    machine that costs about as much as the AES-GCM work itself (on 2 cores: 0.2 s to
    touch 200 MB of new pages, against 0.25 s to decrypt into them). Allocators hand big
    blocks back to the OS soon after they are freed (mimalloc's purge delay is 10 ms), so
    without the free list a pipeline that holds batch N while it decrypts N + 1 would pay
    that on every batch.

    Each buffer given out is an Arrow foreign buffer whose owner object puts the block
    back on a short free list when the last reference goes (the Parquet writer is done
    with it, the training step dropped its tensor). Only blocks of at least ``MIN_BYTES``
    are kept, at most ``KEEP`` of them: memory stays bounded by the batch size. A reused
    block holds a previous batch's bytes; every caller overwrites each byte it hands on
    (rows are written whole, gaps are zeroed), as with any allocator's reused memory.
    """

    MIN_BYTES = 1 << 20
    KEEP = 3

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def alloc(self, nbytes: int) -> np.ndarray:
        if nbytes < self.MIN_BYTES:
            return np.frombuffer(pa.allocate_buffer(nbytes, memory_pool=_POOL), np.uint8)
        size = -(-nbytes // self.MIN_BYTES) * self.MIN_BYTES  # whole MiB: sizes repeat
        block = None
        with self._lock:
            for i, b in enumerate(self._free):
                if b.nbytes == size:
                    block = self._free.pop(i)
                    break
        if block is None:
            block = np.empty(size, np.uint8)
        # a writable view whose owner chain ends in the lease: ctypes, as numpy cannot
        # hang an arbitrary owner on a view and Arrow's foreign buffers are read-only
        view = (ctypes.c_uint8 * nbytes).from_address(block.ctypes.data)
        view._lease = _Lease(self, block)  # type: ignore[attr-defined]
        return np.frombuffer(memoryview(view), np.uint8)

    def give_back(self, block: np.ndarray) -> None:
        with self._lock:
            self._free.append(block)
            del self._free[: -self.KEEP]


class _Lease:
    """Owner of a recycled block while Arrow or numpy holds a view of it."""

    __slots__ = ("_block", "_home")

    def __init__(self, home: _Recycler, block: np.ndarray) -> None:
        self._home, self._block = home, block

    def __del__(self) -> None:
        self._home.give_back(self._block)


def _output_pool() -> pa.MemoryPool:
    try:
        return pa.mimalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without mimalloc
        return pa.default_memory_pool()


_POOL = _output_pool()
_alloc = _Recycler().alloc


def _validity(ok: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())


@register
class Encrypt(Operator[EncryptOp]):
    """AES-256-GCM envelope encryption of template columns (see the module docstring)."""

    name = "encrypt"
    needs_entities = True

    def __init__(self, spec: EncryptOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self._store: KeyStore | None = None
        self._services = RunServices()
        self._run_dek: tuple[bytes, bytes] | None = None
        #: run data keys already unwrapped by this operator's unmasking (see _open_keys)
        self._opened: dict[str, bytes] = {}
        self._lock = threading.Lock()

    # -- operator contract ----------------------------------------------------------------
    def needs(self) -> RunNeeds:
        """The key store (per-subject and run data keys are wrapped there)."""
        return RunNeeds(keystore=True)

    def prepare(self, services: RunServices) -> None:
        """Remember the run's key store URI; the store opens on first use."""
        with self._lock:
            # keys taken from another store must not outlive the switch
            self._services, self._store, self._run_dek = services, None, None
            self._opened.clear()

    @property
    def store(self) -> KeyStore:
        """The run's key store (opened on first use: a policy check needs none)."""
        return self._store_for(create=True)

    def _store_for(self, *, create: bool) -> KeyStore:
        if self._store is None:
            self._store = keystore_for(self._services, self.binding.keyring, create=create)
        return self._store

    @property
    def key_id(self) -> str | None:
        return self.binding.keyring.primary_key_id

    @property
    def reversible(self) -> bool:
        return True

    def check(self, dtype: pa.DataType) -> str | None:
        ent = self.spec.entity
        if ent is not None:
            spec = self.binding.policy.entities.get(ent)
            columns = self.binding.policy.table_specs()[self.binding.table].columns
            if spec is None:
                return f"encrypt names entity '{ent}', which the policy does not declare"
            if spec.column not in columns:
                return (
                    f"encrypt binds templates to entity '{ent}', but its column "
                    f"'{spec.column}' is not in table '{self.binding.table}'"
                )
        ok = pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)
        ok = ok or (_is_list(dtype) and pa.types.is_floating(dtype.value_type))
        return None if ok else "encrypt takes binary or list-of-float template columns"

    def output_type(self, dtype: pa.DataType) -> pa.DataType:
        return pa.binary()

    def metadata(self, dtype: pa.DataType) -> dict[str, str]:
        return {f"biomask.encrypt.{self.binding.column}.type": _type_name(dtype)}

    def reversed_type(self, dtype: pa.DataType, metadata: dict[str, str]) -> pa.DataType:
        return _parse_type(metadata.get(f"biomask.encrypt.{self.binding.column}.type", "binary"))

    # -- inputs ---------------------------------------------------------------------------
    def _plaintexts(
        self, values: pa.Array, ctx: OperatorContext
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The template bytes, zero-copy: Arrow's own value buffer, never a per-row copy.

        Returns
        -------
        raw, starts, nbytes, ok:
            One flat uint8 buffer, each row's byte offset and length in it, and which rows
            get encrypted (valid and well-formed; the others are quarantined here, so a
            malformed template never reaches the output, in clear or at all).
        """
        t = values.type
        n = len(values)
        ok = pc.is_valid(values).to_numpy(zero_copy_only=False).copy()
        if not _is_list(t):
            raw, offs = _binary_parts(values)
            starts, nbytes = offs[:-1], np.diff(offs)
            if self.spec.dim is not None:
                want = self.spec.dim * 4
                wrong = ok & (nbytes != want)
                if wrong.any():
                    got = int(nbytes[np.flatnonzero(wrong)[0]])
                    self._reject(wrong, f"template has {got} bytes, expected {want}", ctx, ok)
            return raw, starts, nbytes, ok
        child = values.values  # the whole child array: slicing is in the offsets
        itemsize = child.type.bit_width // 8
        if pa.types.is_fixed_size_list(t):
            size = t.list_size
            dim: int | None = size
            first = (values.offset + np.arange(n + 1, dtype=np.int64)) * size
        else:
            dim = self.spec.dim
            first = values.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        lengths = np.diff(first)
        buf = child.buffers()[1]
        raw = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
        starts = (child.offset + first[:-1]) * itemsize
        nbytes = lengths * itemsize
        if child.null_count:
            # a null inside a template: its bytes are undefined, so it cannot be encrypted
            span = child.slice(int(first[0]), int(first[-1] - first[0]))
            nulls = pc.is_null(span).to_numpy(zero_copy_only=False)
            owner = np.repeat(np.arange(n), lengths)
            per_row = np.bincount(owner[nulls], minlength=n)
            self._reject(ok & (per_row > 0), "template contains missing values", ctx, ok)
        if dim is not None:
            wrong = ok & (lengths != dim)
            if wrong.any():
                got = int(lengths[np.flatnonzero(wrong)[0]])
                self._reject(wrong, f"template has {got} values, expected {dim}", ctx, ok)
        return raw, starts, nbytes, ok

    @staticmethod
    def _reject(bad: np.ndarray, reason: str, ctx: OperatorContext, ok: np.ndarray) -> None:
        if bad.any():
            ctx.quarantine(bad, reason)
            ok &= ~bad

    def _tokens(self, ctx: OperatorContext, n: int) -> tuple[pa.Array, np.ndarray]:
        """The rows' entity tokens as binary (empty without an entity), and which are null."""
        if self.spec.entity is None:
            return pa.repeat(pa.scalar(b"", pa.binary()), n), np.zeros(n, dtype=bool)
        tok = ctx.entity_tokens[self.spec.entity]
        if pa.types.is_dictionary(tok.type):
            tok = tok.cast(tok.type.value_type)
        if not pa.types.is_binary(tok.type):
            if not (pa.types.is_string(tok.type) or pa.types.is_large_string(tok.type)):
                tok = tok.cast(pa.string())
            tok = tok.cast(pa.binary())
        if not tok.null_count:  # the common case: no copy, no per-batch mask work
            return tok, np.zeros(len(tok), dtype=bool)
        return tok.fill_null(b""), pc.is_null(tok).to_numpy(zero_copy_only=False)

    def _aad_prefix(self) -> bytes:
        """Version 1's prefix (still read)."""
        b = self.binding
        parts = [b"biomask/template/v1", b.policy.dataset.encode(), b.table.encode(),
                 b.column.encode(), b""]  # fmt: skip
        return b"|".join(parts)

    def _aad_prefix_v2(self) -> bytes:
        b = self.binding
        return b"".join(
            _lp(x)
            for x in (
                b"biomask/template/v2",
                b.policy.dataset.encode(),
                b.table.encode(),
                b.column.encode(),
            )
        )

    def _row_keys(
        self, ctx: OperatorContext, n: int, *, masked: bool
    ) -> tuple[pa.Array, np.ndarray]:
        """The rows' ``row_key`` values as binary (empty without one), and which are null.

        Masking binds the row key's *masked* value (the column's token), which is also
        what the masked data holds when it is unmasked.
        """
        name = self.spec.row_key
        if name is None:
            return pa.repeat(pa.scalar(b"", pa.binary()), n), np.zeros(n, dtype=bool)
        col = ctx.memo.peek(("masked", name)) if masked else None
        if col is None:
            col = ctx.batch.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if not pa.types.is_binary(col.type):
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                col = col.cast(pa.string())
            col = col.cast(pa.binary())
        nulls = pc.is_null(col).to_numpy(zero_copy_only=False)
        return (col.fill_null(b"") if nulls.any() else col), nulls

    def _entity_id_prefix(self) -> bytes:
        return f"e:{self.spec.entity}:".encode()

    # -- keys -----------------------------------------------------------------------------
    def _deks(self, dek_ids: list[str], *, create: bool) -> dict[str, bytes]:
        keks = _Keks(self.binding.keyring)
        if create:
            found = self.store.get_or_create(
                dek_ids, lambda ids: [keks.wrap(d, secrets.token_bytes(32)) for d in ids]
            )
        else:
            found = self._store_for(create=False).get(dek_ids)
        return {d: keks.unwrap(d, k, w) for d, (k, w) in found.items()}

    def _open_keys(self, dek_ids: list[str]) -> dict[str, bytes]:
        """The data keys that open these ids; run keys are unwrapped once per operator.

        A training feed unmasks batch after batch of one run's file, and looking the same
        run key up and unwrapping it again cost as much as decrypting a 1024-row batch. Run
        keys are never erased one by one, so keeping them is safe; a subject's key
        (``e:...``) is fetched from the store for every batch, so an erasure takes effect
        at once, even for a feed that is already running. At most 64 run keys are kept.
        """
        want = sorted(set(dek_ids))
        with self._lock:
            got = {d: self._opened[d] for d in want if d in self._opened}
        todo = [d for d in want if d not in got]
        if todo:
            fresh = self._deks(todo, create=False)
            got.update(fresh)
            with self._lock:
                for d, k in fresh.items():
                    if d.startswith("run:") and len(self._opened) < 64:
                        self._opened[d] = k
        return got

    def _run_key(self) -> tuple[bytes, bytes]:
        with self._lock:
            if self._run_dek is None:
                dek_id = f"run:{secrets.token_hex(12)}"
                self._run_dek = (dek_id.encode(), self._deks([dek_id], create=True)[dek_id])
            return self._run_dek

    # -- mask -----------------------------------------------------------------------------
    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        raw, starts, nbytes, ok = self._plaintexts(values, ctx)
        n = len(values)
        tok, tok_null = self._tokens(ctx, n)
        rk, rk_null = self._row_keys(ctx, n, masked=True)
        if self.spec.row_key is not None:
            self._reject(ok & rk_null, f"template has no {self.spec.row_key} to bind it", ctx, ok)
        kid = bytes.fromhex(self.binding.keyring.primary_key_id)
        if self.spec.per_entity_key:
            self._reject(ok & tok_null, "template has no subject token to key it", ctx, ok)
            enc = tok.dictionary_encode()
            uniq: list[bytes] = enc.dictionary.to_pylist()
            which = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            pre = self._entity_id_prefix()
            long_ = np.array([len(pre) + len(u) > 255 for u in uniq], dtype=bool)
            if len(uniq):
                self._reject(ok & long_[which], "subject token too long for a key id", ctx, ok)
            used = np.unique(which[ok])
            names = [(pre + uniq[u]).decode() for u in used.tolist()]
            deks = self._deks(names, create=True) if names else {}
            # per row: index into `used` (the row's DEK and header)
            slot = np.zeros(max(len(uniq), 1), dtype=np.int64)
            slot[used] = np.arange(len(used))
            which = slot[which]
            ids = [name.encode() for name in names]
            keys = [deks[name] for name in names]
        else:
            run_id, run_key = self._run_key()
            ids, keys = [run_id], [run_key]
            which = np.zeros(n, dtype=np.int64)
        headers = [MAGIC + kid + bytes([len(d)]) + d for d in ids]
        head_len = np.array([len(h) for h in headers], dtype=np.int64)[which] if ids else which
        out_len = np.where(ok, head_len + _NONCE + nbytes + _TAG, 0)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(out_len, out=offsets[1:])
        out = _alloc(int(offsets[-1]))
        rows = np.flatnonzero(ok)
        nonces = np.frombuffer(os.urandom(_NONCE * len(rows)), np.uint8).reshape(-1, _NONCE)
        self._write_headers(out, offsets, rows, which, headers, head_len, nonces)
        if len(rows):
            mid, mid_off = _mids_v2(tok, rk, rows)
            aead.seal_rows(
                aead.RowKeys(keys),
                aead.Rows(
                    key_idx=which[rows] if len(keys) > 1 else None,
                    nonce_buf=nonces.reshape(-1),
                    nonce_at=np.arange(len(rows), dtype=np.int64) * _NONCE,
                    src=raw, src_at=starts[rows], length=nbytes[rows],
                    prefix=self._aad_prefix_v2(), mid=mid, mid_off=mid_off,
                    tails=[_lp(h) for h in headers],
                    dst=out, dst_at=offsets[rows] + head_len[rows] + _NONCE,
                ),
            )  # fmt: skip
        return pa.Array.from_buffers(
            pa.large_binary(), n, [_validity(ok), pa.py_buffer(offsets), pa.py_buffer(out)],
            null_count=int(n - len(rows)),
        ).cast(pa.binary())  # fmt: skip

    @staticmethod
    def _write_headers(
        out: np.ndarray,
        offsets: np.ndarray,
        rows: np.ndarray,
        which: np.ndarray,
        headers: list[bytes],
        head_len: np.ndarray,
        nonces: np.ndarray,
    ) -> None:
        """Header and nonce of every row, with numpy: one strided copy when rows are alike."""
        if not len(rows):
            return
        lengths = np.diff(offsets)[rows]
        if len(headers) == 1 and len(rows) == len(which) and (lengths == lengths[0]).all():
            grid = out.reshape(len(rows), int(lengths[0]))  # every row the same shape
            h = len(headers[0])
            grid[:, :h] = np.frombuffer(headers[0], np.uint8)
            grid[:, h : h + _NONCE] = nonces
            return
        for h in np.unique(head_len[rows]).tolist():
            sel = head_len[rows] == h
            r = rows[sel]
            mat = np.frombuffer(b"".join(hd for hd in headers if len(hd) == h), np.uint8)
            pos = np.cumsum([len(hd) == h for hd in headers]) - 1  # header -> row of mat
            mat = mat.reshape(-1, h)[pos[which[r]]]
            idx = offsets[r][:, None] + np.arange(h + _NONCE)[None, :]
            out[idx] = np.concatenate([mat, nonces[sel]], axis=1)

    # -- unmask ---------------------------------------------------------------------------
    def reverse(self, values: pa.Array, ctx: OperatorContext, key_id: str) -> pa.Array:
        """Decrypt back to the original type and bytes.

        ``key_id`` (the file's primary key) is not needed: each ciphertext names its data
        key, and the key store names the key that wraps it.

        Raises
        ------
        DecryptionError
            Any row that is truncated, modified, swapped or does not match its key; one
            bad row refuses the whole batch (a partial output could hide tampering).
        """
        n = len(values)
        target = self.reversed_type(values.type, ctx.metadata)
        if pa.types.is_large_binary(values.type) or pa.types.is_binary(values.type):
            arr = values
        else:
            raise DecryptionError()
        data, offs = _binary_parts(arr)
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(valid)
        starts, lens = offs[:-1], np.diff(offs)
        if (lens[rows] < HEADER_FIXED + _NONCE + _TAG).any():
            raise DecryptionError()
        head = data[starts[rows][:, None] + np.arange(HEADER_FIXED)[None, :]]
        magic = head[:, :3] == np.frombuffer(MAGIC[:3], np.uint8)
        version = np.zeros(n, dtype=np.uint8)
        version[rows] = head[:, 3]
        if not magic.all() or not np.isin(version[rows], (1, 2)).all():
            raise DecryptionError()
        head_len = np.zeros(n, dtype=np.int64)
        head_len[rows] = HEADER_FIXED + head[:, 8].astype(np.int64)
        if (lens[rows] < head_len[rows] + _NONCE + _TAG).any():
            raise DecryptionError()
        headers, which = self._distinct_headers(data, starts, rows, head_len)
        dek_ids: list[str] = []
        for h in headers:
            try:
                dek_ids.append(h[HEADER_FIXED:].decode("utf-8"))
            except UnicodeDecodeError:
                raise DecryptionError() from None
        tok, _ = self._tokens(ctx, n)
        self._check_entity_ids(dek_ids, which, rows, tok)
        deks = self._open_keys(dek_ids)
        # a subject's missing key is an erasure (its id matches the row's token, checked
        # above); a missing run key is a wrong key store or tampering
        missing = np.array([d not in deks for d in dek_ids], dtype=bool)
        if any(m and not d.startswith("e:") for d, m in zip(dek_ids, missing, strict=True)):
            raise DecryptionError()
        if missing.any():  # erased (a tombstone says so), or a store that lost keys
            gone = [d for d, m in zip(dek_ids, missing, strict=True) if m]
            unexplained = set(gone) - self._store_for(create=False).erased(gone)
            if unexplained:
                raise KeyringError(
                    f"key store {self.store.uri} has no key for {len(unexplained)} subject(s) "
                    "of this data and no record of erasing them: it is not the store the data "
                    "was masked with, or it is damaged or incomplete (e.g. a SQLite store "
                    "copied without its -wal file)"
                )
        ok = valid.copy()
        if missing.any():
            erased = np.zeros(n, dtype=bool)
            erased[rows] = missing[which[rows]]
            ctx.quarantine(erased, "subject key erased")
            ok &= ~erased
            rows = np.flatnonzero(ok)
        plen = lens - head_len - _NONCE - _TAG
        out, o_offs = self._out_layout(target, plen, rows, n)
        if len(rows):
            # one key per distinct header (two headers may name one data key, e.g. written
            # before and after a rotation); headers of erased keys have no rows left
            live = [i for i, d in enumerate(dek_ids) if d in deks]
            slot = np.zeros(len(headers), np.int64)
            slot[live] = np.arange(len(live))
            rk, _ = self._row_keys(ctx, n, masked=False)
            for ver in (1, 2):  # a batch may mix rows of files written in both formats
                sel = rows[version[rows] == ver]
                if not len(sel):
                    continue
                if ver == 1:
                    mid, mid_off = _row_tokens(tok, sel)
                    prefix, tails = self._aad_prefix(), [b"|" + headers[i] for i in live]
                else:
                    mid, mid_off = _mids_v2(tok, rk, sel)
                    prefix, tails = self._aad_prefix_v2(), [_lp(headers[i]) for i in live]
                at = starts[sel] + head_len[sel]
                opened = aead.open_rows(
                    aead.RowKeys([deks[dek_ids[i]] for i in live]),
                    aead.Rows(
                        key_idx=slot[which[sel]] if len(live) > 1 else None,
                        nonce_buf=data, nonce_at=at, src=data, src_at=at + _NONCE,
                        length=plen[sel], prefix=prefix, mid=mid, mid_off=mid_off,
                        tails=tails, dst=out, dst_at=o_offs[sel],
                    ),
                )  # fmt: skip
                if not opened:
                    raise DecryptionError()
        return _to_type(out, o_offs, plen, ok, target)

    @staticmethod
    def _distinct_headers(
        data: np.ndarray, starts: np.ndarray, rows: np.ndarray, head_len: np.ndarray
    ) -> tuple[list[bytes], np.ndarray]:
        """The distinct headers, and per row the index of its header (hash-based, numpy)."""
        which = np.zeros(len(starts), dtype=np.int64)
        headers: list[bytes] = []
        for h in np.unique(head_len[rows]).tolist():
            r = rows[head_len[rows] == h]
            step = int(starts[r[1]] - starts[r[0]]) if len(r) > 1 else 0
            if step >= h and (np.diff(starts[r]) == step).all():
                # rows of one length back to back (fixed-size templates): a strided view
                base = data[int(starts[r[0]]) :]
                mat = np.lib.stride_tricks.as_strided(base, (len(r), h), (step, 1))
            else:
                mat = data[starts[r][:, None] + np.arange(h)[None, :]]
            if (mat == mat[0]).all():  # one data key: the common, shared-key case
                which[r] = len(headers)
                headers.append(mat[0].tobytes())
                continue
            fixed = pa.Array.from_buffers(
                pa.binary(h), len(r), [None, pa.py_buffer(np.ascontiguousarray(mat))]
            )
            enc = fixed.dictionary_encode()
            which[r] = len(headers) + enc.indices.to_numpy(zero_copy_only=False)
            headers.extend(enc.dictionary.to_pylist())
        return headers, which

    def _check_entity_ids(
        self, dek_ids: list[str], which: np.ndarray, rows: np.ndarray, tok: pa.Array
    ) -> None:
        """A subject's key may only open that subject's rows: the id must name the token.

        The AAD already binds the token, but checking the id first means a swapped row or
        a changed key id is refused even where the named key was erased (instead of being
        mistaken for an erasure).
        """
        if not any(d.startswith("e:") for d in dek_ids):
            return
        pre = self._entity_id_prefix().decode() if self.spec.entity is not None else None
        named: list[bytes | None] = []
        for d in dek_ids:
            if not d.startswith("e:"):
                named.append(None)
            elif pre is None or not d.startswith(pre):
                raise DecryptionError()
            else:
                named.append(d[len(pre) :].encode())
        want = pa.array(named, pa.binary()).take(pa.array(which[rows]))
        got = tok.take(pa.array(rows))
        same = pc.equal(want, got)
        if not pc.all(pc.or_kleene(same, pc.is_null(want))).as_py():
            raise DecryptionError()

    @staticmethod
    def _out_layout(
        target: pa.DataType, plen: np.ndarray, rows: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The plaintext buffer and each row's offset in it, in the target type's layout.

        Fixed-size lists get a slot for every row (null rows too), so the buffer is the
        child array as it is; other types get each decrypted row back to back.
        """
        if pa.types.is_fixed_size_list(target):
            slot = target.list_size * (target.value_type.bit_width // 8)
            if (plen[rows] != slot).any():
                raise DecryptionError()  # the type in the metadata does not fit the data
            o_offs = np.arange(n + 1, dtype=np.int64) * slot
            out = _alloc(n * slot)
            gaps = np.ones(n, dtype=bool)
            gaps[rows] = False
            out.reshape(n, slot)[gaps] = 0  # null rows: defined bytes, not pool leftovers
            return out, o_offs
        if _is_list(target) and (plen[rows] % (target.value_type.bit_width // 8)).any():
            raise DecryptionError()
        sizes = np.zeros(n, dtype=np.int64)
        sizes[rows] = plen[rows]
        o_offs = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=o_offs[1:])
        return _alloc(int(o_offs[-1])), o_offs


def _lp(part: bytes) -> bytes:
    """One length-prefixed part of the associated data: 4-byte big-endian length, bytes."""
    return len(part).to_bytes(4, "big") + part


def _mids_v2(tok: pa.Array, rk: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per selected row, ``_lp(entity token) + _lp(row key)``: one buffer and its offsets."""
    t_data, t_off = _row_tokens(tok, rows)
    r_data, r_off = _row_tokens(rk, rows)
    tl, rl = np.diff(t_off), np.diff(r_off)
    size = 8 + tl + rl
    off = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(size, out=off[1:])
    out = np.empty(int(off[-1]), dtype=np.uint8)
    start = off[:-1]
    for k, shift in enumerate((24, 16, 8, 0)):
        out[start + k] = (tl >> shift) & 0xFF
        out[start + 4 + tl + k] = (rl >> shift) & 0xFF
    for data, o, ln, at in ((t_data, t_off, tl, start + 4), (r_data, r_off, rl, start + 8 + tl)):
        total = int(ln.sum())
        if total:
            rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
            out[np.repeat(at, ln) + rel] = data[np.repeat(o[:-1], ln) + rel]
    return out, off


def _row_tokens(tok: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Data and offsets of the selected rows' tokens (the AADs' middles), zero-copy when
    every row is selected."""
    return _binary_parts(tok if len(rows) == len(tok) else tok.take(pa.array(rows)))


def _to_type(
    out: np.ndarray, offsets: np.ndarray, plen: np.ndarray, ok: np.ndarray, t: pa.DataType
) -> pa.Array:
    """Wrap the decrypted buffer as the original Arrow type, without copying it."""
    n = len(ok)
    nulls = int(n - ok.sum())
    if not _is_list(t):
        arr = pa.Array.from_buffers(
            pa.large_binary(), n, [_validity(ok), pa.py_buffer(offsets), pa.py_buffer(out)],
            null_count=nulls,
        )  # fmt: skip
        return arr.cast(t)
    value_type = t.value_type
    itemsize = value_type.bit_width // 8
    child = pa.Array.from_buffers(value_type, len(out) // itemsize, [None, pa.py_buffer(out)])
    if pa.types.is_fixed_size_list(t):
        return pa.Array.from_buffers(t, n, [_validity(ok)], null_count=nulls, children=[child])
    item = offsets // itemsize
    if pa.types.is_large_list(t):
        buf = pa.py_buffer(item.astype(np.int64))
    else:
        buf = pa.py_buffer(item.astype(np.int32))
    return pa.Array.from_buffers(t, n, [_validity(ok), buf], null_count=nulls, children=[child])
