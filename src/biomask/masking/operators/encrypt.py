"""The ``encrypt`` operator: AES-256-GCM envelope encryption of biometric templates.

Ciphertext layout (version 1), one ``binary`` value per row::

    b"BMT" | version u8 (=1) | key_id 4 bytes | dek_id_len u8 | dek_id | nonce 12 | ct+tag

- ``key_id`` is the keyring key whose key-encryption key (KEK, ``derive("kek",
  "templates", key_id)``) wrapped the data key when the row was written;
- ``dek_id`` names the data key (DEK) in the key store: ``run:<random>`` for the column's
  shared key of one run, or ``e:<entity>:<token>`` with ``per_entity_key: true``;
- the nonce is random (never derived from the value): equal templates give different
  ciphertexts, so this column is the one documented exception to the Masker's byte-for-
  byte determinism;
- the associated data binds the ciphertext to the dataset, table, column, the row's entity
  token and the header, so a ciphertext copied to another row or column does not decrypt.

Wrapped DEKs live in a key store (:mod:`biomask.keys.keystore`), never raw and never in the
data files: rotation re-wraps them (``biomask rekey``) without touching a template, and
deleting one subject's DEK (``biomask erase``) makes every copy of their templates
unreadable. Decryption failures raise :class:`~biomask.errors.DecryptionError`, whose only
message is "decryption failed".
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biomask.errors import DecryptionError
from biomask.keys.keystore import KeyStore, default_keystore_uri, open_keystore
from biomask.masking.registry import Binding, Operator, OperatorContext, register
from biomask.policies.models import EncryptOp

__all__ = ["MAGIC", "Encrypt", "keystore_for", "rewrap"]

MAGIC = b"BMT\x01"
_STORES: dict[str, KeyStore] = {}
_STORES_LOCK = threading.Lock()


def keystore_for(binding_or_services: dict[str, Any], keyring: Any) -> KeyStore:
    """The key store a run uses: ``services["keystore_uri"]`` or the keyring's default."""
    uri = binding_or_services.get("keystore_uri") or default_keystore_uri(
        keyring.path, keyring.keyring_id
    )
    if "://" not in uri and not uri.startswith("memory:"):
        uri = str(Path(uri).resolve())
    with _STORES_LOCK:
        store = _STORES.get(uri)
        if store is None:
            store = open_keystore(uri)
            _STORES[uri] = store
    return store


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{t.value_type}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{t.value_type}>"
    return str(t)


def _parse_type(name: str) -> pa.DataType:
    if name.startswith("fixed_size_list<"):
        inner, size = name[len("fixed_size_list<") :].split(">[")
        return pa.list_(pa.type_for_alias(inner), int(size.rstrip("]")))
    if name.startswith("list<"):
        return pa.list_(pa.type_for_alias(name[5:-1]))
    return pa.type_for_alias(name)


@register
class Encrypt(Operator[EncryptOp]):
    """AES-256-GCM envelope encryption of template columns."""

    name = "encrypt"

    def __init__(self, spec: EncryptOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self._store: KeyStore | None = None
        self._run_dek: tuple[str, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            self._store = keystore_for(self.binding.services, self.binding.keyring)
        return self._store

    @property
    def key_id(self) -> str | None:
        return self.binding.keyring.primary_key_id

    @property
    def reversible(self) -> bool:
        return True

    def check(self, dtype: pa.DataType) -> str | None:
        ok = (
            pa.types.is_binary(dtype)
            or pa.types.is_large_binary(dtype)
            or (
                (pa.types.is_fixed_size_list(dtype) or pa.types.is_list(dtype))
                and pa.types.is_floating(dtype.value_type)
            )
        )
        return (
            None if ok else f"encrypt takes binary or list-of-float template columns, not {dtype}"
        )

    def output_type(self, dtype: pa.DataType) -> pa.DataType:
        return pa.binary()

    def metadata(self, dtype: pa.DataType) -> dict[str, str]:
        return {f"biomask.encrypt.{self.binding.column}.type": _type_name(dtype)}

    def reversed_type(self, dtype: pa.DataType, metadata: dict[str, str]) -> pa.DataType:
        name = metadata.get(f"biomask.encrypt.{self.binding.column}.type", "binary")
        return _parse_type(name)

    # -- keys -----------------------------------------------------------------------------
    def _kek(self, key_id: str) -> AESGCM:
        return AESGCM(self.binding.keyring.derive("kek", "templates", key_id)._secret())

    def _wrap(self, dek_id: str, dek: bytes) -> tuple[str, str, bytes]:
        kid = self.binding.keyring.primary_key_id
        nonce = secrets.token_bytes(12)
        return dek_id, kid, nonce + self._kek(kid).encrypt(nonce, dek, dek_id.encode())

    def _unwrap(self, dek_id: str, key_id: str, wrapped: bytes) -> bytes:
        try:
            return self._kek(key_id).decrypt(wrapped[:12], wrapped[12:], dek_id.encode())
        except (InvalidTag, ValueError, KeyError):
            raise DecryptionError() from None
        except Exception:  # a key id this keyring does not hold
            raise DecryptionError() from None

    def _deks(self, dek_ids: list[str], *, create: bool) -> dict[str, bytes]:
        if create:
            self.store.put_if_absent([self._wrap(d, secrets.token_bytes(32)) for d in dek_ids])
        found = self.store.get(dek_ids)
        return {d: self._unwrap(d, k, w) for d, (k, w) in found.items()}

    # -- data -----------------------------------------------------------------------------
    def _plaintexts(
        self, values: pa.Array, ctx: OperatorContext
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The template bytes, zero-copy where Arrow allows.

        Returns
        -------
        raw, starts, nbytes, ok:
            One flat uint8 buffer, each row's byte offset and length in it, and which rows
            are encrypted (valid and of the right shape; the others were quarantined).
        """
        t = values.type
        n = len(values)
        valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            arr = values.cast(pa.large_binary())
            bufs = arr.buffers()
            offs = np.frombuffer(bufs[1], np.int64)[arr.offset : arr.offset + n + 1]
            raw = np.frombuffer(bufs[2], np.uint8) if bufs[2] else np.zeros(0, np.uint8)
            starts, nbytes = offs[:-1], np.diff(offs)
            ok = valid.copy()
            if self.spec.dim is not None:
                wrong = ok & (nbytes != self.spec.dim * 4)
                self._reject(wrong, f"template is not {self.spec.dim * 4} bytes", ctx, ok)
            return raw, starts, nbytes, ok
        if pa.types.is_fixed_size_list(t):
            dim: int | None = t.list_size
            lengths = np.full(n, t.list_size, dtype=np.int64)
            flat = values.flatten()
            first = 0
        else:
            dim = self.spec.dim
            lengths = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
            flat = values.values
            first = values.offsets[0].as_py()
        itemsize = flat.type.bit_width // 8
        buf = flat.buffers()[1]
        raw = np.frombuffer(buf, np.uint8)[(flat.offset + first) * itemsize :]
        if pa.types.is_fixed_size_list(t):
            starts = np.arange(n, dtype=np.int64) * t.list_size * itemsize
        else:
            offs = values.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
            starts = (offs[:-1] - first) * itemsize
        nbytes = lengths.astype(np.int64) * itemsize
        ok = valid.copy()
        if flat.null_count:
            owner = np.repeat(np.arange(n), lengths)
            null_rows = np.bincount(
                owner[pc.is_null(flat).to_numpy(zero_copy_only=False)[: len(owner)]], minlength=n
            )
            self._reject(ok & (null_rows > 0), "template contains missing values", ctx, ok)
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
            ok &= ~bad  # never into the output in clear

    def _tokens(self, ctx: OperatorContext, n: int) -> list[bytes]:
        if self.spec.entity is None:
            return [b""] * n
        tok = ctx.entity_tokens[self.spec.entity].cast(pa.string()).fill_null("")
        return list(tok.cast(pa.binary()).to_pylist())

    def _aad_prefix(self) -> bytes:
        b = self.binding
        parts = [b"biomask/template/v1", b.policy.dataset.encode(), b.table.encode(),
                 b.column.encode(), b""]  # fmt: skip
        return b"|".join(parts)

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        raw, starts, nbytes, ok = self._plaintexts(values, ctx)
        n = len(values)
        tokens = self._tokens(ctx, n)
        kid = bytes.fromhex(self.binding.keyring.primary_key_id)
        if self.spec.per_entity_key:
            ent = self.spec.entity
            ids = [f"e:{ent}:".encode() + t for t in tokens]
            need = sorted({d.decode() for d, o in zip(ids, ok.tolist(), strict=True) if o})
            deks = {k.encode(): v for k, v in self._deks(need, create=True).items()}
        else:
            with self._lock:
                if self._run_dek is None:
                    dek_id = f"run:{secrets.token_hex(12)}"
                    self._run_dek = (dek_id, self._deks([dek_id], create=True)[dek_id])
            run_id = self._run_dek[0].encode()
            ids = [run_id] * n
            deks = {run_id: self._run_dek[1]}
        aeads = {d: AESGCM(k) for d, k in deks.items()}
        headers = {d: MAGIC + kid + bytes([len(d)]) + d for d in deks}
        head_len = np.array([9 + len(d) for d in ids], dtype=np.int64)
        out_len = np.where(ok, head_len + 12 + nbytes + 16, 0)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(out_len, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.uint8)
        omv = out.data.cast("B")
        pmv = raw.data.cast("B")
        nonces = os.urandom(12 * n)
        prefix = self._aad_prefix()
        rows = np.flatnonzero(ok).tolist()
        o_l, s_l, b_l = offsets.tolist(), starts.tolist(), nbytes.tolist()
        for i in rows:
            d = ids[i]
            header = headers[d]
            o = o_l[i]
            h = len(header)
            nonce = nonces[12 * i : 12 * i + 12]
            omv[o : o + h] = header
            omv[o + h : o + h + 12] = nonce
            s, ln = s_l[i], b_l[i]
            aeads[d].encrypt_into(
                nonce, pmv[s : s + ln], prefix + tokens[i] + b"|" + header,
                omv[o + h + 12 : o + h + 12 + ln + 16],
            )  # fmt: skip
        validity = pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())
        return pa.Array.from_buffers(
            pa.large_binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(out)],
            null_count=int(n - ok.sum()),
        ).cast(pa.binary())  # fmt: skip

    def reverse(self, values: pa.Array, ctx: OperatorContext, key_id: str) -> pa.Array:
        n = len(values)
        target = self.reversed_type(values.type, ctx.metadata)
        arr = values.cast(pa.large_binary())
        bufs = arr.buffers()
        offs = np.frombuffer(bufs[1], np.int64)[arr.offset : arr.offset + n + 1]
        data = np.frombuffer(bufs[2], np.uint8) if bufs[2] else np.zeros(1, np.uint8)
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        lens = np.diff(offs)
        starts = offs[:-1]
        if ((lens < 9 + 12 + 16) & valid).any():
            raise DecryptionError()
        idx = np.minimum(starts[:, None] + np.arange(9)[None, :], max(len(data) - 1, 0))
        head = data[idx]
        magic = np.frombuffer(MAGIC, np.uint8)
        if ((head[:, :4] != magic).any(axis=1) & valid).any():
            raise DecryptionError()
        id_len = head[:, 8].astype(np.int64)
        head_len = 9 + id_len
        plen = lens - head_len - 12 - 16
        if ((plen < 0) & valid).any():
            raise DecryptionError()
        dmv = data.data.cast("B")
        s_l, h_l = starts.tolist(), head_len.tolist()
        vrows = np.flatnonzero(valid)
        same = False
        if len(vrows) and (head_len[vrows] == head_len[vrows[0]]).all():
            # one header for every row (one data key, one key id): compare, don't decode
            h0 = int(head_len[vrows[0]])
            mat = data[np.minimum(starts[vrows][:, None] + np.arange(h0)[None, :], len(data) - 1)]
            same = bool((mat == mat[0]).all())
        if same:
            first = bytes(dmv[s_l[vrows[0]] + 9 : s_l[vrows[0]] + h_l[vrows[0]]])
            ids = [first] * n
            uniq = [first.decode("ascii", "replace")]
        else:
            ids = [
                bytes(dmv[s + 9 : s + h]) if v else b""
                for s, h, v in zip(s_l, h_l, valid.tolist(), strict=True)
            ]
            uniq = sorted(
                {
                    d.decode("ascii", "replace")
                    for d, v in zip(ids, valid.tolist(), strict=True)
                    if v
                }
            )
        deks = {k.encode(): AESGCM(v) for k, v in self._deks(uniq, create=False).items()}
        tokens = self._tokens(ctx, n)
        prefix = self._aad_prefix()
        ok = valid.copy()
        erased = np.zeros(n, dtype=bool)
        out_len = np.where(valid, plen, 0)
        o_offs = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(out_len, out=o_offs[1:])
        out = np.zeros(int(o_offs[-1]), dtype=np.uint8)
        omv = out.data.cast("B")
        o_l, len_l, p_l = o_offs.tolist(), lens.tolist(), plen.tolist()
        shared_header = (
            dmv[s_l[vrows[0]] : s_l[vrows[0]] + h_l[vrows[0]]].tobytes() if same else b""
        )
        for i in vrows.tolist():
            d = ids[i]
            aead = deks.get(d)
            if aead is None:
                if d.startswith(b"e:"):  # the subject's key was erased: crypto-shredded
                    erased[i] = True
                    ok[i] = False
                    continue
                raise DecryptionError()
            s, h = s_l[i], h_l[i]
            header = shared_header if same else dmv[s : s + h].tobytes()
            o = o_l[i]
            try:
                aead.decrypt_into(
                    dmv[s + h : s + h + 12], dmv[s + h + 12 : s + len_l[i]],
                    prefix + tokens[i] + b"|" + header, omv[o : o + p_l[i]],
                )  # fmt: skip
            except InvalidTag:
                raise DecryptionError() from None
        if erased.any():
            ctx.quarantine(erased, "subject key erased")
        return _to_type(out, o_offs, ok, target)


def rewrap(store: KeyStore, keyring: Any) -> int:
    """Re-wrap every data key not under the primary key; returns how many changed.

    Template ciphertexts name their data key by id, so they are not touched.
    """
    primary = keyring.primary_key_id
    new_kek = AESGCM(keyring.derive("kek", "templates", primary)._secret())
    changed = []
    for dek_id, key_id, wrapped in store.rows():
        if key_id == primary:
            continue
        old = AESGCM(keyring.derive("kek", "templates", key_id)._secret())
        try:
            dek = old.decrypt(wrapped[:12], wrapped[12:], dek_id.encode())
        except InvalidTag:
            raise DecryptionError() from None
        nonce = secrets.token_bytes(12)
        changed.append((dek_id, primary, nonce + new_kek.encrypt(nonce, dek, dek_id.encode())))
    store.replace(changed)
    return len(changed)


def _to_type(out: np.ndarray, offsets: np.ndarray, ok: np.ndarray, t: pa.DataType) -> pa.Array:
    """Rebuild the original Arrow type from the decrypted bytes, without per-row copies."""
    n = len(ok)
    mask = pa.array(~ok)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        offs = np.where(ok, np.diff(offsets), 0)
        o = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(offs, out=o[1:])
        validity = pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())
        arr = pa.Array.from_buffers(
            pa.large_binary(), n, [validity, pa.py_buffer(o), pa.py_buffer(out)],
            null_count=int(n - ok.sum()),
        )  # fmt: skip
        return arr.cast(t)
    value_type = t.value_type
    np_type = np.dtype(value_type.to_pandas_dtype())
    flat = out.view(np_type)
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        if ok.all() and len(flat) == n * size:  # the common case: wrap the buffer, no copy
            full = flat
        else:  # each decrypted row sits at its own offset (erased rows are gaps)
            full2 = np.zeros((n, size), dtype=np_type)
            rows = np.flatnonzero(ok)
            if len(rows):
                full2[rows] = flat.reshape(-1, size)[offsets[rows] // (size * np_type.itemsize)]
            full = full2.reshape(-1)
        values = pa.Array.from_buffers(value_type, n * size, [None, pa.py_buffer(full)])
        return pa.FixedSizeListArray.from_arrays(values, size, mask=mask)
    item_offsets = (offsets // np_type.itemsize).astype(np.int32)
    values = pa.Array.from_buffers(value_type, len(flat), [None, pa.py_buffer(flat)])
    return pa.ListArray.from_arrays(pa.array(item_offsets), values, mask=mask)
