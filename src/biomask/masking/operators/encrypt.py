"""The ``encrypt`` operator: templates sealed with envelope encryption, per Arrow column.

A thin adapter: it reads a template column's bytes zero-copy (binary, or lists of floats),
finds each row's entity token, row key token and data key, and hands them to
:mod:`biomask.keys.envelope`, which owns the ciphertext format, the associated data, the
data keys and their wrapping, the key-store cache, ``rewrap`` and erasure. Unmasking
parses the headers there, opens the rows' keys (a subject's missing key is an erasure:
its rows are quarantined, ``subject key erased``) and writes the plaintexts back in the
column's original Arrow type, without per-row byte objects.

With ``per_entity_key: true`` a row's data key is its subject's
(``e:<entity>:<name>``), named by the subject's token under the keyring's pinned entity
key (:mod:`biomask.masking.entities`): the row's own token until ``keys rotate-tokens``,
the same name after it.

The nonce is random: equal templates give different ciphertexts. This column is the one
documented exception to the Masker's byte-for-byte determinism; tokens and every other
column stay deterministic.

Failures: a swapped, truncated or modified ciphertext, or a wrong key, raises
:class:`~biomask.errors.DecryptionError` for the whole run, whose only message is
"decryption failed". A row whose subject key was erased is not an attack but a known fact,
so unmask quarantines it and decrypts the rest.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.errors import BiomaskError, DecryptionError, KeyringError
from biomask.keys import Keyring, envelope
from biomask.keys.envelope import (
    HEADER_FIXED,
    MAGIC,
    MAGIC_V1,
    is_subject_key_id,
    rewrap,
    subject_key_prefix,
)
from biomask.keys.keystore import KeyStore
from biomask.masking.entities import SubjectNames, as_binary
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    dictionary_encode,
    register,
)
from biomask.masking.services import RunNeeds, RunServices
from biomask.policies.models import EncryptOp
from biomask.types import binary_parts

__all__ = ["HEADER_FIXED", "MAGIC", "MAGIC_V1", "Encrypt", "keystore_for", "rewrap"]


def keystore_for(services: RunServices, keyring: Keyring, *, create: bool = True) -> KeyStore:
    """The key store a run uses: ``services.keystore_uri`` or the keyring's default.

    One per URI in the process (:func:`biomask.keys.envelope.keystore`). Only masking
    creates a store (``create``); reading one that does not exist is an error.
    """
    return envelope.keystore(services.keystore_uri, keyring, create=create)


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

    @property
    def names_entity(self) -> str | None:
        return self.spec.entity if self.spec.per_entity_key else None

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
            raw, offs = binary_parts(values)
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
        tok = as_binary(ctx.entity_tokens[self.spec.entity])
        if not tok.null_count:  # the common case: no copy, no per-batch mask work
            return tok, np.zeros(len(tok), dtype=bool)
        return tok.fill_null(b""), pc.is_null(tok).to_numpy(zero_copy_only=False)

    def _aad_prefix(self) -> bytes:
        """Version 1's prefix (still read)."""
        b = self.binding
        return envelope.aad_prefix_v1(b.policy.dataset, b.table, b.column)

    def _aad_prefix_v2(self) -> bytes:
        b = self.binding
        return envelope.aad_prefix_v2(b.policy.dataset, b.table, b.column)

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
        col = as_binary(ctx.batch.column(name) if col is None else col)
        nulls = pc.is_null(col).to_numpy(zero_copy_only=False)
        return (col.fill_null(b"") if nulls.any() else col), nulls

    def _entity_id_prefix(self) -> bytes:
        assert self.spec.entity is not None
        return subject_key_prefix(self.spec.entity).encode()

    def _subject_names(self, ctx: OperatorContext, tok: pa.Array) -> pa.Array:
        """Per row, the name of its subject's key (binary; see the module docstring).

        The Masker hands the names over (``ctx.entity_names``); the token is the name while
        the token key is the entity key. Otherwise (a caller that masks batches without
        the Masker) they are computed here from the batch's raw entity column.
        """
        assert self.spec.entity is not None
        ring = self.binding.keyring
        if ring.token_key_id == ring.entity_key_id:
            # no rotate-tokens since the key was pinned: every token this keyring made or
            # still reads is a name (key stores named before the pin included)
            return tok
        names = ctx.entity_names.get(self.spec.entity)
        if names is not None:
            return as_binary(names)
        column = self.binding.policy.entities[self.spec.entity].column
        names = SubjectNames(self.binding.policy, ring, self.binding.table).from_values(
            self.spec.entity, ctx.batch.column(column)
        )
        return as_binary(names)

    def _expected_names(self, ctx: OperatorContext, tok: pa.Array) -> pa.Array | None:
        """Per row of masked data, its subject's key name; None where it cannot be told.

        Data masked under the entity key (every output until ``keys rotate-tokens``, and
        files that name no token key) carry the names as their tokens. Later outputs'
        tokens are turned back into ids with the key that made them and masked under the
        entity key; for a rule whose tokens cannot be inverted (``hash``) there is no
        name to compare, and the associated data's binding of the token is the check.
        """
        assert self.spec.entity is not None
        ring = self.binding.keyring
        made_with = ctx.metadata.get("biomask.token_key_id")
        if made_with is None or made_with == ring.entity_key_id:
            return tok
        names = SubjectNames(self.binding.policy, ring, self.binding.table)
        try:
            entity_col = ctx.entity_tokens[self.spec.entity]
            return as_binary(names.from_tokens(self.spec.entity, entity_col, made_with))
        except BiomaskError:  # not invertible: nothing to compare with
            return None

    # -- keys -----------------------------------------------------------------------------
    def _deks(self, dek_ids: list[str], *, create: bool) -> dict[str, bytes]:
        store = self.store if create else self._store_for(create=False)
        return envelope.data_keys(store, self.binding.keyring, dek_ids, create=create)

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
                dek_id = envelope.run_key_id()
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
        if self.spec.per_entity_key:
            self._reject(ok & tok_null, "template has no subject token to key it", ctx, ok)
            named = self._subject_names(ctx, tok)
            if named is not tok and named.null_count:
                nameless = pc.is_null(named).to_numpy(zero_copy_only=False)
                self._reject(ok & nameless, "template has no subject token to key it", ctx, ok)
                named = named.fill_null(b"")
            enc = dictionary_encode(named)
            uniq: list[bytes] = enc.dictionary.to_pylist()
            which = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            pre = len(self._entity_id_prefix())
            long_ = np.array([pre + len(u) > 255 for u in uniq], dtype=bool)
            if len(uniq):
                self._reject(ok & long_[which], "subject token too long for a key id", ctx, ok)
            used = np.unique(which[ok])
            assert self.spec.entity is not None
            names = [
                envelope.subject_key_id(self.spec.entity, uniq[u].decode()) for u in used.tolist()
            ]
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
        return envelope.seal(
            self.binding.keyring.primary_key_id,
            ids,
            keys,
            which,
            (raw, starts, nbytes, ok),
            tok,
            rk,
            self._aad_prefix_v2(),
        )

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
        h = envelope.read_headers(values)
        dek_ids = h.dek_ids
        rows = np.flatnonzero(h.valid)
        tok, _ = self._tokens(ctx, n)
        self._check_entity_ids(dek_ids, h.which, rows, tok, ctx)
        deks = self._open_keys(dek_ids)
        # a subject's missing key is an erasure (its id matches the row's subject, checked
        # above); a missing run key is a wrong key store or tampering
        missing = np.array([d not in deks for d in dek_ids], dtype=bool)
        if any(m and not is_subject_key_id(d) for d, m in zip(dek_ids, missing, strict=True)):
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
        ok = h.valid.copy()
        if missing.any():
            erased = np.zeros(n, dtype=bool)
            erased[rows] = missing[h.which[rows]]
            ctx.quarantine(erased, "subject key erased")
            ok &= ~erased
            rows = np.flatnonzero(ok)
        plen = h.plain_len
        out, o_offs = self._out_layout(target, plen, rows, n)
        rk, _ = self._row_keys(ctx, n, masked=False)
        prefixes = (self._aad_prefix(), self._aad_prefix_v2())
        envelope.open_rows(h, rows, deks, tok, rk, prefixes, out, o_offs)
        return _to_type(out, o_offs, plen, ok, target)

    def _check_entity_ids(
        self,
        dek_ids: list[str],
        which: np.ndarray,
        rows: np.ndarray,
        tok: pa.Array,
        ctx: OperatorContext,
    ) -> None:
        """A subject's key may only open that subject's rows: the id must name the subject.

        The AAD already binds the token, but checking the id first means a swapped row or
        a changed key id is refused even where the named key was erased (instead of being
        mistaken for an erasure). The name is the row's token (data masked under the entity
        key, and key stores named before the entity key existed) or the row's subject's
        name under the entity key (:meth:`_expected_names`). The names the headers give
        are offered to the re-encryption of ``rekey --upgrade`` (``ctx.entity_names``).
        """
        if not any(is_subject_key_id(d) for d in dek_ids):
            return
        pre = self._entity_id_prefix().decode() if self.spec.entity is not None else None
        named: list[bytes | None] = []
        for d in dek_ids:
            if not is_subject_key_id(d):
                named.append(None)
            elif pre is None or not d.startswith(pre):
                raise DecryptionError()
            else:
                named.append(d[len(pre) :].encode())
        assert self.spec.entity is not None
        per_row = pa.array(named, pa.binary()).take(pa.array(which))
        want = per_row.take(pa.array(rows))
        same = pc.equal(want, tok.take(pa.array(rows)))
        if not pc.all(pc.or_kleene(same, pc.is_null(want))).as_py():
            expected = self._expected_names(ctx, tok)
            if expected is not None:
                same = pc.or_kleene(same, pc.equal(want, expected.take(pa.array(rows))))
                if not pc.all(pc.or_kleene(same, pc.is_null(want))).as_py():
                    raise DecryptionError()
        ctx.entity_names[self.spec.entity] = per_row

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
            out = envelope.alloc(n * slot)
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
        return envelope.alloc(int(o_offs[-1])), o_offs


def _to_type(
    out: np.ndarray, offsets: np.ndarray, plen: np.ndarray, ok: np.ndarray, t: pa.DataType
) -> pa.Array:
    """Wrap the decrypted buffer as the original Arrow type, without copying it."""
    n = len(ok)
    nulls = int(n - ok.sum())
    if not _is_list(t):
        arr = pa.Array.from_buffers(
            pa.large_binary(), n, [envelope.validity(ok), pa.py_buffer(offsets), pa.py_buffer(out)],
            null_count=nulls,
        )  # fmt: skip
        return arr.cast(t)
    value_type = t.value_type
    itemsize = value_type.bit_width // 8
    child = pa.Array.from_buffers(value_type, len(out) // itemsize, [None, pa.py_buffer(out)])
    if pa.types.is_fixed_size_list(t):
        return pa.Array.from_buffers(
            t, n, [envelope.validity(ok)], null_count=nulls, children=[child]
        )
    item = offsets // itemsize
    if pa.types.is_large_list(t):
        buf = pa.py_buffer(item.astype(np.int64))
    else:
        buf = pa.py_buffer(item.astype(np.int32))
    return pa.Array.from_buffers(
        t, n, [envelope.validity(ok), buf], null_count=nulls, children=[child]
    )
