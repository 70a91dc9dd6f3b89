"""Keyed, consistent operators: hash, tokenize, email, phone.

All of them run their crypto once per distinct value (:func:`map_distinct`) and key it by
the rule's *domain*, so the same value gets the same token in every column, file, batch and
process that uses that domain, and different domains give unrelated tokens.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.keys.primitives import DeterministicPrf, ragged_stream
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    is_string_type,
    map_distinct,
    register,
)
from biomask.masking.shape import codepoints, from_codepoints, shape_tokens
from biomask.policies.models import EmailOp, HashOp, PhoneOp, TokenizeOp

__all__ = ["Email", "Hash", "Phone", "Tokenize", "phone_parts"]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _count_collisions(uniq: pa.Array, out: pa.Array, ctx: OperatorContext) -> None:
    lost = len(uniq) - len(pc.unique(out))
    if lost:
        ctx.count("token_collisions", lost)


@register
class Hash(Operator[HashOp]):
    """Keyed BLAKE2b, hex: irreversible, consistent per domain, fixed length."""

    name = "hash"

    def __init__(self, spec: HashOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.prf = DeterministicPrf(binding.keyring.derive("hash", spec.domain))

    @property
    def key_id(self) -> str | None:
        return self.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        ok = is_string_type(dtype) or pa.types.is_integer(dtype) or pa.types.is_binary(dtype)
        return None if ok else "hash takes string, integer or binary columns"

    def output_type(self, dtype: pa.DataType) -> pa.DataType:
        return pa.string()

    def _digest(self, uniq: pa.Array) -> pa.Array:
        raw = uniq
        nbytes = (self.spec.length + 1) // 2
        s = self.prf.stream(raw, nbytes)
        hexed = np.empty((len(raw), nbytes * 2), dtype=np.uint8)
        hexed[:, 0::2] = _HEX[s >> 4]
        hexed[:, 1::2] = _HEX[s & 15]
        hexed = np.ascontiguousarray(hexed[:, : self.spec.length])
        offsets = np.arange(len(raw) + 1, dtype=np.int32) * self.spec.length
        return pa.StringArray.from_buffers(
            len(raw), pa.py_buffer(offsets.tobytes()), pa.py_buffer(hexed.tobytes())
        )

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        if pa.types.is_integer(values.type):
            values = values.cast(pa.string())
        return map_distinct(values, self._digest)


@register
class Tokenize(Operator[TokenizeOp]):
    """Format-shaped consistent tokens (irreversible keyed PRF)."""

    name = "tokenize"

    def __init__(self, spec: TokenizeOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.prf = DeterministicPrf(binding.keyring.derive("tokenize", spec.domain))

    @property
    def key_id(self) -> str | None:
        return self.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        return (
            None
            if is_string_type(dtype)
            else "tokenize takes string columns (use hash for numbers)"
        )

    def tokens(self, uniq: pa.Array) -> pa.Array:
        """Tokens for distinct, non-null values (used by the text operator too)."""
        return shape_tokens(self.prf, uniq, prefix=self.spec.prefix)

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        def fn(uniq: pa.Array) -> pa.Array:
            out = self.tokens(uniq)
            _count_collisions(uniq, out, ctx)
            return out

        return map_distinct(values, fn).cast(values.type)


@register
class Email(Operator[EmailOp]):
    """A valid e-mail address: local part tokenized, domain kept (or tokenized, TLD kept).

    The PRF is keyed on the lower-cased address, so ``Isabel.P@Example.org`` in a note and
    ``isabel.p@example.org`` in a column get the same token (in their own case shapes).
    """

    name = "email"

    def __init__(self, spec: EmailOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.prf = DeterministicPrf(binding.keyring.derive("email", spec.domain))
        self.prf_domain = DeterministicPrf(binding.keyring.derive("email-domain", spec.domain))

    @property
    def key_id(self) -> str | None:
        return self.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        return None if is_string_type(dtype) else "email takes string columns"

    def tokens(self, uniq: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """Tokens for distinct non-null values, and a mask of values that are not e-mails."""
        parts = pc.extract_regex(uniq, r"^(?P<local>[^@\s]+)@(?P<domain>[^@\s.][^@\s]*\.[^@\s]+)$")
        bad = pc.is_null(parts).to_numpy(zero_copy_only=False)
        local = pc.struct_field(parts, "local").fill_null("x")
        domain = pc.struct_field(parts, "domain").fill_null("invalid.example")
        keys = pc.utf8_lower(uniq)
        local_tok = shape_tokens(self.prf, local, prf_input=keys, prefix=None)
        if not self.spec.keep_domain:
            domain = self._domain_tokens(domain)
        return pc.binary_join_element_wise(local_tok, domain, "@"), bad

    def _domain_tokens(self, domains: pa.Array) -> pa.Array:
        parts = pc.extract_regex(domains, r"^(?P<head>.+)\.(?P<tld>[^.]+)$")
        head = pc.struct_field(parts, "head")
        tld = pc.struct_field(parts, "tld")
        tok = shape_tokens(self.prf_domain, head, prf_input=pc.utf8_lower(domains), prefix=None)
        return pc.binary_join_element_wise(tok, tld, ".")

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        out, bad = self.tokens(enc.dictionary)
        if bad.any():
            rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(bad), enc.indices.type))
            ctx.quarantine(rows.fill_null(False), "not an e-mail address")
            out = pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), out)
        return out.take(enc.indices).cast(values.type)


# ITU-T E.164 country calling codes: 1 and 7 are one digit; these are two; the rest three.
_CC2 = np.array(
    [20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55,
     56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98]
)  # fmt: skip


def phone_layout(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which characters of each phone number change, computed for the whole array at once.

    The kept part is the country code (after ``+`` or ``00``) or the trunk ``0`` of a
    national number; every other digit changes, separators stay.

    Returns
    -------
    cps, offsets:
        The values' code points (see :func:`codepoints`).
    change:
        Per code point: a digit of the national significant number (the part that changes
        and that keys the PRF, so ``+44 20 7946 0958`` and ``020 7946 0958`` agree).
    bad:
        Per value: fewer than 4 digits (not a phone number).
    """
    cps, offsets = codepoints(values)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(cps)) - np.repeat(offsets[:-1], lengths)
    isdig = (cps >= 48) & (cps <= 57)
    csum = np.cumsum(isdig)
    before = np.concatenate(([0], csum))[offsets[:-1]]  # digits before each value
    rank = csum - 1 - np.repeat(before, lengths)  # 0-based digit rank within the value
    ndig = np.bincount(owner[isdig], minlength=n)
    digit_at = np.full((n, 5), -1, dtype=np.int64)  # first five digits of each value
    first5 = isdig & (rank < 5)
    digit_at[owner[first5], rank[first5]] = cps[first5].astype(np.int64) - 48
    nonspace = ~((cps == 32) | (cps == 9))
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, owner[nonspace], pos[nonspace])
    has = first < lengths
    lead = np.zeros(n, dtype=np.uint32)
    lead[has] = cps[offsets[:-1][has] + first[has]]
    plus = lead == ord("+")
    double0 = ~plus & (digit_at[:, 0] == 0) & (digit_at[:, 1] == 0)
    skip = np.where(double0, 2, 0)
    rows = np.arange(n)
    c0 = digit_at[rows, np.minimum(skip, 4)]
    c1 = digit_at[rows, np.minimum(skip + 1, 4)]
    cc_len = np.where(np.isin(c0, (1, 7)), 1, np.where(np.isin(c0 * 10 + c1, _CC2), 2, 3))
    intl = plus | double0
    keep = np.where(intl, skip + cc_len, np.where(digit_at[:, 0] == 0, 1, 0))
    change = isdig & (rank >= np.repeat(keep, lengths))
    return cps, offsets, change, ndig < 4


def phone_parts(value: str) -> tuple[int, str] | None:
    """Kept prefix length and national significant number of one phone number.

    A scalar view of :func:`phone_layout`, for callers with a single value (and tests).
    """
    cps, _, change, bad = phone_layout(pa.array([value], pa.string()))
    if bad[0]:
        return None
    digits = np.flatnonzero((cps >= 48) & (cps <= 57))
    changed = np.flatnonzero(change)
    kept = digits[digits < changed[0]] if len(changed) else digits
    keep_upto = int(kept[-1]) + 1 if len(kept) else 0
    return keep_upto, "".join(chr(c) for c in cps[change])


@register
class Phone(Operator[PhoneOp]):
    """Phone numbers: country code, trunk prefix, digit count and separators kept."""

    name = "phone"

    def __init__(self, spec: PhoneOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.prf = DeterministicPrf(binding.keyring.derive("phone", spec.domain))

    @property
    def key_id(self) -> str | None:
        return self.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        return None if is_string_type(dtype) else "phone takes string columns"

    def tokens(self, uniq: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """Tokens for distinct non-null values, and a mask of values that are not phones."""
        cps, offsets, change, bad = phone_layout(uniq)
        n = len(offsets) - 1
        owner = np.repeat(np.arange(n), np.diff(offsets))
        per_value = np.bincount(owner[change], minlength=n)
        key_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(per_value, out=key_offsets[1:])
        keys = from_codepoints(cps[change], key_offsets)  # the national significant numbers
        # The k-th digit of the national number gets the k-th keystream digit, whatever
        # the separators around it, so every format of one number agrees.
        rnd = ragged_stream(self.prf, keys, per_value * 2).view(np.uint16)
        out_cps = cps.copy()
        out_cps[change] = 48 + rnd % 10
        return from_codepoints(out_cps, offsets), bad

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        out, bad = self.tokens(enc.dictionary)
        if bad.any():
            rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(bad), enc.indices.type))
            ctx.quarantine(rows.fill_null(False), "not a phone number")
            out = pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), out)
        return out.take(enc.indices).cast(values.type)
