"""Keyed, consistent operators: hash, tokenize, email, phone.

All of them run their crypto once per distinct value (:func:`map_distinct`) and key it by
the rule's *domain*, so the same value gets the same token in every column, file, batch and
process that uses that domain, and different domains give unrelated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.keys.primitives import DeterministicPrf, _native, hkdf, ragged_stream
from biomask.masking.ff1 import FF1
from biomask.masking.fpe import ReversibleTokenizer
from biomask.masking.integers import MIN_BITS, permute_integers
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    is_string_type,
    map_distinct,
    register,
)
from biomask.masking.shape import codepoints, from_codepoints, shape_tokens, utf8_buffers
from biomask.policies.models import EmailOp, HashOp, PhoneOp, TokenizeOp

__all__ = ["Email", "Hash", "Phone", "PhoneDigits", "Tokenize", "phone_digits", "phone_parts"]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
#: what the email operator accepts: one "@", no spaces, a dot in the domain
_EMAIL = r"^[^@\s]+@[^@\s.][^@\s]*\.[^@\s]+$"


def _count_collisions(uniq: pa.Array, out: pa.Array, ctx: OperatorContext) -> None:
    lost = len(uniq) - len(pc.unique(out))
    if lost:
        ctx.count("token_collisions", lost)


@register
class Hash(Operator[HashOp]):
    """Keyed PRF (the domain's AES CBC-MAC), hex: irreversible, consistent, fixed length."""

    name = "hash"
    parallel_safe = True

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
    """Format-shaped consistent tokens: a keyed PRF, or FF1 when ``reversible``.

    Integer columns of 32 or 64 bits get integers of their own type and sign, always from
    a keyed permutation (:mod:`biomask.masking.integers`).

    With ``format: icao_document`` or ``format: luhn`` the last character is a check digit:
    the input's must be valid (else the row is quarantined) and the token's is recomputed,
    so tokens pass the same check as the documents they replace.
    """

    name = "tokenize"
    parallel_safe = True

    def __init__(self, spec: TokenizeOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        handle = binding.keyring.derive("tokenize", spec.domain)
        self.prf = DeterministicPrf(handle)
        #: irreversible integer tokens: a permutation too (see _integer_tokens)
        self._int_ff1 = FF1(hkdf(handle._secret(), "tokenize/integers", 32), 2)
        self.fpe = (
            ReversibleTokenizer(binding.keyring, spec.domain, spec.prefix, spec.format)
            if spec.reversible
            else None
        )

    @property
    def key_id(self) -> str | None:
        return self.prf.key_id

    @property
    def reversible(self) -> bool:
        return self.fpe is not None

    def check(self, dtype: pa.DataType) -> str | None:
        if is_string_type(dtype):
            return None
        if not pa.types.is_integer(dtype):
            return f"tokenize takes string or integer columns, not {dtype} (use hash)"
        if dtype.bit_width < MIN_BITS:
            return (
                f"tokenize takes integers of {MIN_BITS} bits or more: a {dtype} holds fewer "
                "values than FF1's minimum domain of 10^6 (use hash, or cast the column)"
            )
        if self.spec.format != "shape":
            return f"format: {self.spec.format} takes string columns, not {dtype}"
        if self.spec.prefix not in ("auto", None):
            return f"prefix takes string columns; an integer token keeps no prefix ({dtype})"
        return None

    def tokens(self, uniq: pa.Array) -> pa.Array:
        """Tokens for distinct, non-null values (used by the text operator too)."""
        if self.fpe is not None:
            res = self.fpe.encrypt(uniq)
            return pc.if_else(pa.array(res.bad), pa.scalar(None, pa.string()), res.values)
        out = shape_tokens(self.prf, uniq, prefix=self.spec.prefix)
        if self.spec.format != "shape":
            out = _fix_check_digit(out, self.spec.format)
        return out

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        uniq = enc.dictionary
        if pa.types.is_integer(values.type):
            out, bad, reason = self._integer_tokens(uniq)
        else:
            out, bad, reason = self._string_tokens(uniq)
            lost = len(uniq) - len(pc.unique(out))
            if lost:
                ctx.count("token_collisions", lost)
        result = _finish(enc, out, bad, reason, ctx)
        # An entity's date offsets are a function of its tokens' text: offer them per
        # distinct value, so date_shift need not find the distinct tokens again.
        nulled = pc.if_else(pa.array(bad), pa.scalar(None, out.type), out) if bad.any() else out
        ctx.memo.put(("tokens", self.binding.column), (enc.indices, nulled.cast(pa.string())))
        return result.cast(values.type)

    def _string_tokens(self, uniq: pa.Array) -> tuple[pa.Array, np.ndarray, str]:
        if self.fpe is not None:
            res = self.fpe.encrypt(uniq)
            return res.values, res.bad, res.reason
        bad = np.zeros(len(uniq), dtype=bool)
        reason = ""
        if self.spec.format != "shape":
            bad = ~_check_digit_valid(uniq, self.spec.format)
            reason = f"not a valid {self.spec.format} number (wrong check digit or characters)"
        return self.tokens(uniq), bad, reason

    def _integer_tokens(self, uniq: pa.Array) -> tuple[pa.Array, np.ndarray, str]:
        """Integer tokens of the column's own type and sign.

        Always a keyed permutation (:mod:`biomask.masking.integers`), never a PRF: serial
        keys fill their range, and a PRF would merge about a third of them (so there are
        no collisions to count). Irreversible tokens use a key of their own, which
        ``unmask`` never uses.
        """
        if self.fpe is not None:
            res = self.fpe.integers(uniq)
            return res.values, res.bad, res.reason
        out, bad = permute_integers(self._int_ff1, uniq)
        return out, bad, "FF1 cycle walk did not end"

    def reverse(self, values: pa.Array, ctx: OperatorContext, key_id: str) -> pa.Array:
        assert self.fpe is not None
        enc = values.dictionary_encode()
        if pa.types.is_integer(values.type):
            res = self.fpe.integers(enc.dictionary, key_id, decrypt=True)
        else:
            res = self.fpe.decrypt(enc.dictionary, key_id)
        return _finish(enc, res.values, res.bad, res.reason, ctx).cast(values.type)


def _finish(
    enc: pa.DictionaryArray, out: pa.Array, bad: np.ndarray, reason: str, ctx: OperatorContext
) -> pa.Array:
    """Expand per-distinct results to rows; rows of bad values are nulled and quarantined."""
    if bad.any():
        rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(bad), enc.indices.type))
        ctx.quarantine(rows.fill_null(False), reason)
        out = pc.if_else(pa.array(bad), pa.scalar(None, out.type), out)
    return out.take(enc.indices)


def _fixed_width(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cps, offsets = codepoints(values)
    return cps, offsets, np.diff(offsets)


def _check_digit_valid(values: pa.Array, fmt: str) -> np.ndarray:
    from biomask.masking.checkdigits import icao_digits, luhn_digits

    fn = icao_digits if fmt == "icao_document" else luhn_digits
    cps, offsets, lengths = _fixed_width(values)
    ok = np.zeros(len(lengths), dtype=bool)
    for length in np.unique(lengths):
        if length < 2:
            continue
        rows = np.flatnonzero(lengths == length)
        m = cps[offsets[rows][:, None] + np.arange(length)[None, :]]
        ascii_ok = (m < 128).all(axis=1)
        digit = fn(np.clip(m[:, :-1], 0, 255).astype(np.uint8))
        ok[rows] = ascii_ok & (digit == m[:, -1].astype(np.int64))
    return ok


def _fix_check_digit(values: pa.Array, fmt: str) -> pa.Array:
    from biomask.masking.checkdigits import icao_digits, luhn_digits

    fn = icao_digits if fmt == "icao_document" else luhn_digits
    cps, offsets, lengths = _fixed_width(values)
    cps = cps.copy()
    for length in np.unique(lengths):
        if length < 2:
            continue
        rows = np.flatnonzero(lengths == length)
        idx = offsets[rows][:, None] + np.arange(length)[None, :]
        digit = fn(np.clip(cps[idx][:, :-1], 0, 255).astype(np.uint8))
        ok = digit >= 0
        cps[idx[ok, -1]] = digit[ok].astype(np.uint32)
    return from_codepoints(cps, offsets)


@register
class Email(Operator[EmailOp]):
    """A valid e-mail address: local part tokenized, domain kept (or tokenized, TLD kept).

    The PRF is keyed on the lower-cased address, so ``Isabel.P@Example.org`` in a note and
    ``isabel.p@example.org`` in a column get the same token (in their own case shapes).
    """

    name = "email"
    parallel_safe = True

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
        """Tokens for distinct non-null values, and a mask of values that are not e-mails.

        The local part is shaped in place and ``@domain`` copied after it (``upto``), with
        the keystream keyed on the whole lower-cased address; the tokens of values that
        are not e-mails are meaningless, and their rows are quarantined and nulled.
        """
        keys = pc.utf8_lower(uniq)
        ok, local_len = _email_layout(uniq)
        if self.spec.keep_domain:
            out = shape_tokens(self.prf, uniq, prf_input=keys, prefix=None, upto=local_len)
            return out, ~ok
        # Valid addresses have exactly one "@": split there (invalid ones get a stand-in).
        parts = pc.split_pattern(
            pc.if_else(pa.array(ok), uniq, "x@invalid.example"), "@", max_splits=1
        )
        local_tok = shape_tokens(self.prf, pc.list_element(parts, 0), prf_input=keys, prefix=None)
        domain = self._domain_tokens(pc.list_element(parts, 1))
        return pc.binary_join_element_wise(local_tok, domain, "@"), ~ok

    def _domain_tokens(self, domains: pa.Array) -> pa.Array:
        # valid domains hold a dot past their first character: split at the last one
        parts = pc.split_pattern(domains, ".", max_splits=1, reverse=True)
        head = pc.list_element(parts, 0)
        tld = pc.list_element(parts, 1)
        tok = shape_tokens(self.prf_domain, head, prf_input=pc.utf8_lower(domains), prefix=None)
        return pc.binary_join_element_wise(tok, tld, ".")

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        out, bad = self.tokens(enc.dictionary)
        return _finish(enc, out, bad, "not an e-mail address", ctx).cast(values.type)


def _email_layout(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per value: whether it is an address (:data:`_EMAIL`), and its local part's length.

    The compiled kernel does both in one pass over the bytes; the fallback asks Arrow's
    regex engine and splits at the "@".
    """
    native = _native()
    if native is not None:
        _, offs, data = utf8_buffers(values)
        ok = np.empty(len(values), dtype=np.uint8)
        local = np.empty(len(values), dtype=np.int64)
        native.email_scan(offs, data, ok, local)
        return ok.view(bool), local
    ok_arr = pc.match_substring_regex(values, _EMAIL).fill_null(False)
    parts = pc.split_pattern(values, "@", max_splits=1)
    local = pc.utf8_length(pc.list_element(parts, 0)).to_numpy(zero_copy_only=False)
    return ok_arr.to_numpy(zero_copy_only=False), local.astype(np.int64)


# ITU-T E.164 country calling codes: 1 and 7 are one digit; these are two; the rest three.
_CC2 = np.array(
    [20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55,
     56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98]
)  # fmt: skip


@dataclass(frozen=True)
class PhoneDigits:
    """Which digits of each phone number change, found for the whole array at once.

    The kept part is the country code (after ``+`` or ``00``) or the trunk ``0`` of a
    national number; every other digit changes, separators stay. Everything here is
    ASCII (digits, ``+``, spaces), and UTF-8 never uses ASCII bytes inside a multi-byte
    character, so the work is done on the raw bytes of the Arrow buffer: no decoding,
    and replacing digits by digits keeps every byte offset.

    Attributes
    ----------
    data:
        The values' UTF-8 bytes, back to back.
    offsets:
        ``n + 1`` byte offsets of the values into ``data``.
    at:
        Positions in ``data`` of the digits that change (the national significant number,
        which also keys the PRF, so ``+44 20 7946 0958`` and ``020 7946 0958`` agree),
        value after value.
    per_value:
        How many digits of each value change.
    bad:
        Per value: fewer than 4 digits (not a phone number).
    """

    data: np.ndarray
    offsets: np.ndarray
    at: np.ndarray
    per_value: np.ndarray
    bad: np.ndarray

    def national(self) -> pa.Array:
        """The national significant numbers, one string per value."""
        offs = np.zeros(len(self.per_value) + 1, dtype=np.int32)
        np.cumsum(self.per_value, out=offs[1:])
        return pa.StringArray.from_buffers(
            len(self.per_value), pa.py_buffer(offs), pa.py_buffer(self.data[self.at])
        )

    def replaced(self, digits: np.ndarray) -> pa.Array:
        """The values with the changing digits replaced by ``digits`` (ASCII bytes)."""
        out = self.data.copy()
        out[self.at] = digits
        offs = self.offsets.astype(np.int32)
        return pa.StringArray.from_buffers(
            len(self.offsets) - 1, pa.py_buffer(offs), pa.py_buffer(out)
        )


def phone_digits(values: pa.Array) -> PhoneDigits:
    """Lay out the phone numbers of a null-free string array (see :class:`PhoneDigits`)."""
    n = len(values)
    _, raw, buf = utf8_buffers(values)
    offsets = raw - raw[0]
    data = np.frombuffer(buf, dtype=np.uint8)[int(raw[0]) : int(raw[-1])]  # read-only view
    native = _native()
    if native is not None:
        keep = np.empty(n, dtype=np.int64)
        ndig = np.empty(n, dtype=np.int64)
        native.phone_scan(offsets, data, keep, ndig)
        per_value = np.maximum(ndig - keep, 0)
        at = np.empty(int(per_value.sum()), dtype=np.int64)
        native.phone_positions(offsets, data, keep, at)
        return PhoneDigits(data, offsets, at, per_value, ndig < 4)
    starts, ends = offsets[:-1], offsets[1:]
    dpos = np.flatnonzero((data >= 48) & (data <= 57))
    before = np.searchsorted(dpos, starts)
    ndig = np.searchsorted(dpos, ends) - before
    digit_at = np.full((n, 5), -1, dtype=np.int64)  # first five digits of each value
    for k in range(5):
        has = ndig > k
        digit_at[has, k] = data[dpos[before[has] + k]].astype(np.int64) - 48
    nonspace = np.flatnonzero((data != 32) & (data != 9))
    first = np.searchsorted(nonspace, starts)
    firstc = np.minimum(first, max(len(nonspace) - 1, 0))
    has = (first < len(nonspace)) & (nonspace[firstc] < ends) if len(nonspace) else first < 0
    lead = np.where(has, data[nonspace[firstc]] if len(nonspace) else 0, 0)
    plus = lead == ord("+")
    double0 = ~plus & (digit_at[:, 0] == 0) & (digit_at[:, 1] == 0)
    skip = np.where(double0, 2, 0)
    rows = np.arange(n)
    c0 = digit_at[rows, np.minimum(skip, 4)]
    c1 = digit_at[rows, np.minimum(skip + 1, 4)]
    cc_len = np.where(np.isin(c0, (1, 7)), 1, np.where(np.isin(c0 * 10 + c1, _CC2), 2, 3))
    intl = plus | double0
    keep = np.where(intl, skip + cc_len, np.where(digit_at[:, 0] == 0, 1, 0))
    rank = np.arange(len(dpos)) - np.repeat(before, ndig)
    change = rank >= np.repeat(keep, ndig)
    per_value = np.maximum(ndig - keep, 0)
    return PhoneDigits(data, offsets, dpos[change], per_value, ndig < 4)


def phone_parts(value: str) -> tuple[int, str] | None:
    """Kept prefix length (in characters) and national significant number of one number.

    A scalar view of :func:`phone_digits`, for callers with a single value (and tests).
    """
    lay = phone_digits(pa.array([value], pa.string()))
    if lay.bad[0]:
        return None
    digits = np.flatnonzero((lay.data >= 48) & (lay.data <= 57))
    kept = digits[digits < lay.at[0]] if len(lay.at) else digits
    keep_upto = len(bytes(lay.data[: int(kept[-1]) + 1]).decode("utf-8")) if len(kept) else 0
    return keep_upto, str(lay.national()[0])


@register
class Phone(Operator[PhoneOp]):
    """Phone numbers: country code, trunk prefix, digit count and separators kept."""

    name = "phone"
    parallel_safe = True

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
        lay = phone_digits(uniq)
        # The k-th digit of the national number gets the k-th keystream digit, whatever
        # the separators around it, so every format of one number agrees.
        if self.spec.reversible:
            bad = lay.bad.copy()
            digits = self._ff1(lay.data[lay.at].astype(np.int64) - 48, lay.per_value, None, bad)
            return lay.replaced((48 + digits).astype(np.uint8)), bad
        rnd = ragged_stream(self.prf, lay.national(), lay.per_value * 2).view(np.uint16)
        return lay.replaced((48 + rnd % 10).astype(np.uint8)), lay.bad

    def _ff1(
        self,
        digits: np.ndarray,
        per_value: np.ndarray,
        key_id: str | None,
        bad: np.ndarray,
        *,
        decrypt: bool = False,
    ) -> np.ndarray:
        """FF1 (radix 10, tweak = domain) over each value's national-number digits.

        Values whose national number has fewer than 6 digits cannot be encrypted within
        NIST's minimum domain and are marked bad (quarantined).
        """
        secret = self.binding.keyring.derive("ff1", self.spec.domain, key_id)._secret()
        cipher = FF1(secret, 10)
        starts = np.concatenate(([0], np.cumsum(per_value)))[:-1]
        out = digits.copy()
        for length in np.unique(per_value):
            rows = np.flatnonzero(per_value == length)
            if length < 6:
                bad[rows] = True
                continue
            idx = starts[rows][:, None] + np.arange(length)[None, :]
            block = digits[idx]
            tweak = self.spec.domain.encode()
            out[idx] = cipher.decrypt(block, tweak) if decrypt else cipher.encrypt(block, tweak)
        return out

    @property
    def reversible(self) -> bool:
        return self.spec.reversible

    def reverse(self, values: pa.Array, ctx: OperatorContext, key_id: str) -> pa.Array:
        enc = values.dictionary_encode()
        lay = phone_digits(enc.dictionary)
        bad = lay.bad.copy()
        digits = self._ff1(
            lay.data[lay.at].astype(np.int64) - 48, lay.per_value, key_id, bad, decrypt=True
        )
        out = lay.replaced((48 + digits).astype(np.uint8))
        return _finish(enc, out, bad, "not a reversible phone token", ctx).cast(values.type)

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        out, bad = self.tokens(enc.dictionary)
        return _finish(
            enc,
            out,
            bad,
            "not a phone number"
            + (" with at least 6 national digits (FF1)" if self.spec.reversible else ""),
            ctx,
        ).cast(values.type)
