"""Keyed, consistent operators: hash, tokenize, email, phone.

All of them run their crypto once per distinct value (:func:`map_distinct`) and key it by
the rule's *domain*, so the same value gets the same token in every column, file, batch and
process that uses that domain, and different domains give unrelated tokens.
"""

from __future__ import annotations

import unicodedata

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
        raw = (
            uniq.cast(pa.binary()).to_pylist()
            if not pa.types.is_binary(uniq.type)
            else uniq.to_pylist()
        )
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
        vals = uniq.to_pylist()
        locals_: list[str] = []
        domains: list[str] = []
        bad = np.zeros(len(vals), dtype=bool)
        for i, v in enumerate(vals):
            local, at, dom = v.rpartition("@")
            if not at or not local or "." not in dom or dom.startswith(".") or " " in v.strip():
                bad[i] = True
                local, dom = v or "x", "invalid.example"
            locals_.append(local)
            domains.append(dom)
        keys = [v.strip().lower().encode() for v in vals]
        local_tok = shape_tokens(
            self.prf, pa.array(locals_, pa.string()), prf_input=keys, prefix=None
        )
        dom_arr = pa.array(domains, pa.string())
        if not self.spec.keep_domain:
            dom_arr = self._domain_tokens(domains)
        out = pc.binary_join_element_wise(local_tok, dom_arr, "@")
        return out, bad

    def _domain_tokens(self, domains: list[str]) -> pa.Array:
        heads: list[str] = []
        tlds: list[str] = []
        for d in domains:
            head, _, tld = d.rpartition(".")
            heads.append(head)
            tlds.append(tld)
        keys = [d.lower().encode() for d in domains]
        tok = shape_tokens(
            self.prf_domain, pa.array(heads, pa.string()), prf_input=keys, prefix=None
        )
        return pc.binary_join_element_wise(tok, pa.array(tlds, pa.string()), ".")

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        out, bad = self.tokens(enc.dictionary)
        if bad.any():
            rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(bad), enc.indices.type))
            ctx.quarantine(rows.fill_null(False), "not an e-mail address")
            out = pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), out)
        return out.take(enc.indices).cast(values.type)


# ITU-T E.164 country calling codes: 1 and 7 are one digit; these are two; the rest three.
_CC2 = {
    20,
    27,
    30,
    31,
    32,
    33,
    34,
    36,
    39,
    40,
    41,
    43,
    44,
    45,
    46,
    47,
    48,
    49,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    60,
    61,
    62,
    63,
    64,
    65,
    66,
    81,
    82,
    84,
    86,
    90,
    91,
    92,
    93,
    94,
    95,
    98,
}


def phone_parts(value: str) -> tuple[int, str] | None:
    """How many leading characters to keep (country code or trunk 0), and the key digits.

    The key is the national significant number, so ``+44 20 7946 0958`` and
    ``020 7946 0958`` (one number in two formats) tokenize to the same digits.
    Returns None for a value with fewer than 4 digits (not a phone number).
    """
    s = value
    digits = [i for i, c in enumerate(s) if "0" <= c <= "9"]
    if len(digits) < 4:
        return None
    first = s.lstrip()
    if first.startswith("+") or first.startswith("00"):
        skip = 2 if first.startswith("00") else 0
        d = "".join(s[i] for i in digits)[skip:]
        cc_len = 1 if d[0] in "17" else (2 if int(d[:2]) in _CC2 else 3)
        keep_digits = skip + cc_len
    elif s[digits[0]] == "0":
        keep_digits = 1
    else:
        keep_digits = 0
    keep_upto = digits[keep_digits - 1] + 1 if keep_digits else 0
    nsn = "".join(s[i] for i in digits[keep_digits:])
    return keep_upto, nsn


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
        vals = uniq.to_pylist()
        keep = np.zeros(len(vals), dtype=np.int64)
        keys: list[bytes] = []
        bad = np.zeros(len(vals), dtype=bool)
        for i, v in enumerate(vals):
            parts = phone_parts(unicodedata.normalize("NFKC", v))
            if parts is None:
                bad[i] = True
                keys.append(v.encode())
                continue
            keep[i] = parts[0]
            keys.append(parts[1].encode())
        # The k-th digit of the national number gets the k-th keystream digit, whatever
        # the separators around it, so every format of one number agrees.
        cps, offsets = codepoints(uniq)
        lengths = np.diff(offsets)
        pos = np.arange(len(cps)) - np.repeat(offsets[:-1], lengths)
        change = (cps >= 48) & (cps <= 57) & (pos >= np.repeat(keep, lengths))
        owner = np.repeat(np.arange(len(vals)), lengths)
        per_value = np.bincount(owner[change], minlength=len(vals))
        rnd = ragged_stream(self.prf, keys, per_value * 2).view(np.uint16)
        out_cps = cps.copy()
        out_cps[change] = 48 + rnd % 10
        out = from_codepoints(out_cps, offsets)
        return out, bad

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = values.dictionary_encode()
        out, bad = self.tokens(enc.dictionary)
        if bad.any():
            rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(bad), enc.indices.type))
            ctx.quarantine(rows.fill_null(False), "not a phone number")
            out = pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), out)
        return out.take(enc.indices).cast(values.type)
