"""Envelope encryption of templates: data keys, their wrapping, the wire format, erasure.

A template column is sealed row by row with AES-256-GCM under data keys (DEKs); each DEK
is 32 random bytes wrapped under the keyring's key-encryption key (KEK) and kept in a key
store (:mod:`biomask.keys.keystore`), never raw and never in the data files. The
``encrypt`` operator (:class:`biomask.masking.operators.encrypt.Encrypt`) is a thin
adapter over Arrow columns; everything that makes a ciphertext is here.

Ciphertext layout (version 2; version 1 has the same layout), one value per row::

    b"BMT" | version u8 (=2) | key_id 4 bytes | dek_id_len u8 | dek_id | nonce 12 | ct+tag

- ``key_id`` is the keyring key (8 hex digits, stored as 4 bytes) that was primary when the
  row was written; the data key itself is unwrapped with the key id its key-store row names,
  which :func:`rewrap` may have moved on to a newer key;
- ``dek_id`` (ASCII/UTF-8, at most 255 bytes) names the DEK in the key store: ``run:<random>``
  for the key one run shares over a column, or ``e:<entity>:<name>`` for one subject's key
  (:func:`subject_key_id`, the one place that writes that format). ``<name>`` is the
  subject's token under the keyring's pinned entity key
  (:attr:`biomask.keys.Keyring.entity_key_id`), so it survives every rotation and erasing
  it reaches every copy of the subject's templates;
- the nonce is random (``os.urandom``, never derived from the value): equal templates give
  different ciphertexts;
- the associated data (version 2) is the length-prefixed parts (4-byte big-endian length,
  then the bytes) ``biomask/template/v2``, dataset, table, column, the row's entity token,
  the row's ``row_key`` token (empty without one) and the header, so a ciphertext moved to
  another row (with ``row_key``), subject, column, table or dataset, or given another
  header, does not decrypt. Version 1 (``|``-joined, no row key) still opens.

The KEK is ``keyring.derive("kek", "templates", key_id)``; a DEK is wrapped with the
dek_id as associated data. Rotation re-wraps DEKs (:func:`rewrap`) without touching a
template; erasing one subject's DEK (:func:`erase_subject_key`) makes every copy of their
templates unreadable.

Speed: no per-row Python. Headers, nonces, offsets and associated data are numpy over the
column; the AES-GCM work of a batch is one call into :mod:`biomask.keys.aead`.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biomask.errors import DecryptionError, KeyringError
from biomask.keys import aead
from biomask.keys.keyring import Keyring
from biomask.keys.keystore import KeyStore, Row, default_keystore_uri, open_keystore
from biomask.types import binary_parts

__all__ = [
    "HEADER_FIXED",
    "MAGIC",
    "MAGIC_V1",
    "NONCE",
    "TAG",
    "Headers",
    "Keks",
    "aad_prefix_v1",
    "aad_prefix_v2",
    "alloc",
    "data_keys",
    "erase_subject_key",
    "is_subject_key_id",
    "keystore",
    "lp",
    "mids_v2",
    "open_rows",
    "read_headers",
    "rewrap",
    "row_tokens",
    "seal",
    "subject_key_id",
    "subject_key_prefix",
]

#: magic and format version (2: length-prefixed associated data with the row key)
MAGIC = b"BMT\x02"
#: the first format: "|"-joined associated data, no row key (still opens)
MAGIC_V1 = b"BMT\x01"
#: bytes before the dek_id: magic+version (4), key id (4), dek_id length (1)
HEADER_FIXED = 9
NONCE = 12
TAG = 16
_KEK_DOMAIN = "templates"
_STORES: dict[str, KeyStore] = {}
_STORES_LOCK = threading.Lock()


# -- data key ids -------------------------------------------------------------------------
def subject_key_prefix(entity: str) -> str:
    """``e:<entity>:``: what every subject key id of ``entity`` starts with."""
    return f"e:{entity}:"


def subject_key_id(entity: str, name: str) -> str:
    """The id of the data key of the subject of ``entity`` named ``name``."""
    return subject_key_prefix(entity) + name


def is_subject_key_id(dek_id: str) -> bool:
    """Whether ``dek_id`` names one subject's key (and not a run's shared key)."""
    return dek_id.startswith("e:")


def run_key_id() -> str:
    """A fresh id for the data key one run shares over a column."""
    return f"run:{secrets.token_hex(12)}"


# -- the key store ------------------------------------------------------------------------
def keystore(uri: str | None, keyring: Keyring, *, create: bool = True) -> KeyStore:
    """The key store at ``uri``, or the keyring's default one; one per URI in the process.

    Stores are cached per URI, so the operators of every column (and every Masker of a
    multi-table run) share one connection. Only masking creates a store (``create``);
    reading one that does not exist is an error.
    """
    uri = uri or default_keystore_uri(keyring.path, keyring.keyring_id)
    if "://" not in uri and not uri.startswith("memory:"):
        uri = str(Path(uri).resolve())
    with _STORES_LOCK:
        store = _STORES.get(uri)
        if store is None:
            store = open_keystore(uri, create=create)
            _STORES[uri] = store
    return store


class Keks:
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
        """``dek`` wrapped under the primary key's KEK, as a key-store row."""
        kid = self.keyring.primary_key_id
        nonce = secrets.token_bytes(NONCE)
        return dek_id, kid, nonce + self._kek(kid).encrypt(nonce, dek, dek_id.encode())

    def unwrap(self, dek_id: str, key_id: str, wrapped: bytes) -> bytes:
        """The DEK of a key-store row; :class:`DecryptionError` if it does not open."""
        try:
            return self._kek(key_id).decrypt(wrapped[:NONCE], wrapped[NONCE:], dek_id.encode())
        except (InvalidTag, ValueError, KeyringError):  # KeyringError: a key id we do not hold
            raise DecryptionError() from None


def data_keys(
    store: KeyStore, keyring: Keyring, dek_ids: Sequence[str], *, create: bool
) -> dict[str, bytes]:
    """The DEKs of ``dek_ids`` that the store holds (fresh ones made where ``create``)."""
    keks = Keks(keyring)
    if create:
        found = store.get_or_create(
            dek_ids, lambda ids: [keks.wrap(d, secrets.token_bytes(32)) for d in ids]
        )
    else:
        found = store.get(dek_ids)
    return {d: keks.unwrap(d, k, w) for d, (k, w) in found.items()}


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
    keks = Keks(keyring)
    changed = [
        keks.wrap(dek_id, keks.unwrap(dek_id, key_id, wrapped))
        for dek_id, key_id, wrapped in store.rows()
        if key_id != primary
    ]
    if changed:
        store.replace(changed)
    return len(changed)


def erase_subject_key(
    store: KeyStore, entity: str, name: str
) -> tuple[str, Literal["erased", "already erased", "missing"]]:
    """Delete one subject's data key: its id, and whether it was erased now or before.

    ``missing`` (no key and no record of erasing one) is for the caller to report: the
    name is wrong, or the store is not the one the data was masked with.
    """
    dek_id = subject_key_id(entity, name)
    if store.erase(dek_id):
        return dek_id, "erased"
    if store.erased([dek_id]):
        return dek_id, "already erased"
    return dek_id, "missing"


# -- output buffers -----------------------------------------------------------------------
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
#: a writable uint8 buffer of ``nbytes`` for a batch's output (see :class:`_Recycler`)
alloc = _Recycler().alloc


def validity(ok: np.ndarray) -> pa.Buffer:
    """An Arrow validity bitmap of a boolean mask."""
    return pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())


# -- associated data ----------------------------------------------------------------------
def lp(part: bytes) -> bytes:
    """One length-prefixed part of the associated data: 4-byte big-endian length, bytes."""
    return len(part).to_bytes(4, "big") + part


def aad_prefix_v1(dataset: str, table: str, column: str) -> bytes:
    """Version 1's associated data before the row's token (still read)."""
    parts = [b"biomask/template/v1", dataset.encode(), table.encode(), column.encode(), b""]
    return b"|".join(parts)


def aad_prefix_v2(dataset: str, table: str, column: str) -> bytes:
    """Version 2's associated data before the row's parts."""
    return b"".join(
        lp(x) for x in (b"biomask/template/v2", dataset.encode(), table.encode(), column.encode())
    )


def mids_v2(tok: pa.Array, rk: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per selected row, ``lp(entity token) + lp(row key)``: one buffer and its offsets."""
    t_data, t_off = row_tokens(tok, rows)
    r_data, r_off = row_tokens(rk, rows)
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


def row_tokens(tok: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Data and offsets of the selected rows' tokens (the AADs' middles), zero-copy when
    every row is selected."""
    return binary_parts(tok if len(rows) == len(tok) else tok.take(pa.array(rows)))


# -- seal ---------------------------------------------------------------------------------
def seal(
    key_id: str,
    dek_ids: list[bytes],
    deks: list[bytes],
    which: np.ndarray,
    plain: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tok: pa.Array,
    rk: pa.Array,
    prefix: bytes,
) -> pa.Array:
    """Seal every ``ok`` row of a batch; a binary array (null where not ``ok``).

    Parameters
    ----------
    key_id:
        The primary key id, for the headers.
    dek_ids, deks:
        The data keys used, and per row (``which``) the index of the row's key.
    plain:
        ``(raw, starts, nbytes, ok)``: one buffer holding the plaintexts, each row's offset
        and length in it, and which rows to seal.
    tok, rk:
        Each row's entity token and row key token (binary; empty where there is none).
    prefix:
        The associated data before the row's parts (:func:`aad_prefix_v2`).
    """
    raw, starts, nbytes, ok = plain
    n = len(ok)
    kid = bytes.fromhex(key_id)
    headers = [MAGIC + kid + bytes([len(d)]) + d for d in dek_ids]
    head_len = np.array([len(h) for h in headers], dtype=np.int64)[which] if dek_ids else which
    out_len = np.where(ok, head_len + NONCE + nbytes + TAG, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(out_len, out=offsets[1:])
    out = alloc(int(offsets[-1]))
    rows = np.flatnonzero(ok)
    nonces = np.frombuffer(os.urandom(NONCE * len(rows)), np.uint8).reshape(-1, NONCE)
    _write_headers(out, offsets, rows, which, headers, head_len, nonces)
    if len(rows):
        mid, mid_off = mids_v2(tok, rk, rows)
        aead.seal_rows(
            aead.RowKeys(deks),
            aead.Rows(
                key_idx=which[rows] if len(deks) > 1 else None,
                nonce_buf=nonces.reshape(-1),
                nonce_at=np.arange(len(rows), dtype=np.int64) * NONCE,
                src=raw, src_at=starts[rows], length=nbytes[rows],
                prefix=prefix, mid=mid, mid_off=mid_off,
                tails=[lp(h) for h in headers],
                dst=out, dst_at=offsets[rows] + head_len[rows] + NONCE,
            ),
        )  # fmt: skip
    return pa.Array.from_buffers(
        pa.large_binary(), n, [validity(ok), pa.py_buffer(offsets), pa.py_buffer(out)],
        null_count=int(n - len(rows)),
    ).cast(pa.binary())  # fmt: skip


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
        grid[:, h : h + NONCE] = nonces
        return
    for h in np.unique(head_len[rows]).tolist():
        sel = head_len[rows] == h
        r = rows[sel]
        mat = np.frombuffer(b"".join(hd for hd in headers if len(hd) == h), np.uint8)
        pos = np.cumsum([len(hd) == h for hd in headers]) - 1  # header -> row of mat
        mat = mat.reshape(-1, h)[pos[which[r]]]
        idx = offsets[r][:, None] + np.arange(h + NONCE)[None, :]
        out[idx] = np.concatenate([mat, nonces[sel]], axis=1)


# -- open ---------------------------------------------------------------------------------
@dataclass
class Headers:
    """The parsed headers of a batch of ciphertexts (:func:`read_headers`).

    Attributes
    ----------
    data, starts, lens:
        The ciphertext buffer, each row's offset and length in it.
    valid:
        Which rows hold a ciphertext (the others are null).
    version:
        Per row, the format version (1 or 2; 0 for null rows).
    head_len:
        Per row, the header's length (fixed part and dek_id).
    headers, which:
        The distinct headers, and per row the index of its header.
    dek_ids:
        The data key id each distinct header names.
    """

    data: np.ndarray
    starts: np.ndarray
    lens: np.ndarray
    valid: np.ndarray
    version: np.ndarray
    head_len: np.ndarray
    headers: list[bytes]
    which: np.ndarray
    dek_ids: list[str]

    @property
    def plain_len(self) -> np.ndarray:
        """Per row, the plaintext's length."""
        lens: np.ndarray = self.lens - self.head_len - NONCE - TAG
        return lens


def read_headers(values: pa.Array) -> Headers:
    """Parse the headers of a binary column of ciphertexts.

    Raises
    ------
    DecryptionError
        A row that is too short, has another magic or version, or names its data key in
        bytes that are not UTF-8.
    """
    if not (pa.types.is_large_binary(values.type) or pa.types.is_binary(values.type)):
        raise DecryptionError()
    n = len(values)
    data, offs = binary_parts(values)
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid)
    starts, lens = offs[:-1], np.diff(offs)
    if (lens[rows] < HEADER_FIXED + NONCE + TAG).any():
        raise DecryptionError()
    head = data[starts[rows][:, None] + np.arange(HEADER_FIXED)[None, :]]
    magic = head[:, :3] == np.frombuffer(MAGIC[:3], np.uint8)
    version = np.zeros(n, dtype=np.uint8)
    version[rows] = head[:, 3]
    if not magic.all() or not np.isin(version[rows], (1, 2)).all():
        raise DecryptionError()
    head_len = np.zeros(n, dtype=np.int64)
    head_len[rows] = HEADER_FIXED + head[:, 8].astype(np.int64)
    if (lens[rows] < head_len[rows] + NONCE + TAG).any():
        raise DecryptionError()
    headers, which = _distinct_headers(data, starts, rows, head_len)
    dek_ids: list[str] = []
    for h in headers:
        try:
            dek_ids.append(h[HEADER_FIXED:].decode("utf-8"))
        except UnicodeDecodeError:
            raise DecryptionError() from None
    return Headers(data, starts, lens, valid, version, head_len, headers, which, dek_ids)


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


def open_rows(
    h: Headers,
    rows: np.ndarray,
    deks: dict[str, bytes],
    tok: pa.Array,
    rk: pa.Array,
    prefixes: tuple[bytes, bytes],
    out: np.ndarray,
    out_at: np.ndarray,
) -> None:
    """Open the ciphertexts of ``rows`` into ``out`` at ``out_at`` (per row of the batch).

    ``deks`` holds the data key of every header the rows use; ``prefixes`` is the
    associated data before the row's parts in version 1 and version 2
    (:func:`aad_prefix_v1`, :func:`aad_prefix_v2`); a batch may mix rows of both.

    Raises
    ------
    DecryptionError
        Any row that is modified, swapped or does not match its key: one bad row refuses
        the whole batch (a partial output could hide tampering).
    """
    if not len(rows):
        return
    # one key per distinct header (two headers may name one data key, e.g. written
    # before and after a rotation); headers of erased keys have no rows left
    live = [i for i, d in enumerate(h.dek_ids) if d in deks]
    slot = np.zeros(len(h.headers), np.int64)
    slot[live] = np.arange(len(live))
    plen = h.plain_len
    for ver in (1, 2):
        sel = rows[h.version[rows] == ver]
        if not len(sel):
            continue
        if ver == 1:
            mid, mid_off = row_tokens(tok, sel)
            prefix, tails = prefixes[0], [b"|" + h.headers[i] for i in live]
        else:
            mid, mid_off = mids_v2(tok, rk, sel)
            prefix, tails = prefixes[1], [lp(h.headers[i]) for i in live]
        at = h.starts[sel] + h.head_len[sel]
        opened = aead.open_rows(
            aead.RowKeys([deks[h.dek_ids[i]] for i in live]),
            aead.Rows(
                key_idx=slot[h.which[sel]] if len(live) > 1 else None,
                nonce_buf=h.data, nonce_at=at, src=h.data, src_at=at + NONCE,
                length=plen[sel], prefix=prefix, mid=mid, mid_off=mid_off,
                tails=tails, dst=out, dst_at=out_at[sel],
            ),
        )  # fmt: skip
        if not opened:
            raise DecryptionError()
