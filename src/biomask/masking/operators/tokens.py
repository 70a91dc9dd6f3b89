"""Keyed, consistent operators: hash, tokenize, email, phone.

All of them run their crypto once per distinct value (:func:`map_distinct`) and key it by
the rule's *domain*, so the same value gets the same token in every column, file, batch and
process that uses that domain, and different domains give unrelated tokens. Their keys
come from the keyring's token key (:meth:`biomask.keys.Keyring.derive_token`), so
``keys rotate`` changes no token.

Distinct in, distinct out: ``tokenize`` (strings and integers), ``email`` and ``phone``
tokens are keyed permutations (:mod:`biomask.masking.permute`,
:mod:`biomask.masking.integers`), so two values of a domain never share a token; a value
whose shape is too small for one (fewer than 10^6 values) is quarantined with that
reason. ``hash`` is a 128-bit-or-longer PRF where identity matters (an entity's column or
a domain a ``text`` rule links to; the policy refuses shorter ones there).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.errors import PolicyError
from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import DeterministicPrf, hkdf
from biomask.masking.ff1 import FF1
from biomask.masking.fpe import ReversibleTokenizer
from biomask.masking.integers import MIN_BITS, permute_integers
from biomask.masking.permute import ShapePermutation
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    dictionary_encode,
    expand,
    is_string_type,
    map_distinct,
    register,
)
from biomask.masking.shape import (
    _native,
    codepoints,
    from_codepoints,
    prefix_lengths,
    utf8_buffers,
)
from biomask.policies.models import EmailOp, HashOp, PhoneOp, TokenizeOp

__all__ = [
    "WEAK_STAT",
    "Email",
    "Hash",
    "Phone",
    "PhoneDigits",
    "Tokenize",
    "phone_digits",
    "phone_parts",
    "weak_email_message",
]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
#: what the email operator accepts: one "@", no spaces, a dot in the domain
_EMAIL = r"^[^@\s]+@[^@\s.][^@\s]*\.[^@\s]+$"


#: why a value gets no shaped token (quarantine reasons; they name no value)
SMALL_REASON = (
    "too few possible values of this shape for a token that never merges two values "
    "(fewer than 10^6, NIST SP 800-38G's minimum for FF1): use longer ids, hash "
    "(length >= 32) or generalize"
)
WALK_REASON = "FF1 cycle walk did not end"
#: run statistic (:meth:`OperatorContext.count`) of an ``email`` column's distinct
#: addresses whose local part was permuted within a shape of fewer than 10^6 values; the
#: key is this prefix and the column (``table.column`` in a multi-table policy)
WEAK_STAT = "email_weak:"


def weak_email_message(column: str, count: int) -> str:
    """What the run summary says about ``count`` weak local parts of ``column``, and the fix.

    Such a token is still distinct from every other address's, but its local part is one of
    fewer than 10^6 values of the same shape (``info``, ``j.li``), so it hides little: a
    guess at the original is checked by masking it again with the same keyring.
    """
    what = "address" if count == 1 else "addresses"
    return (
        f"email column '{column}': {count:,} distinct {what} with a local part of fewer "
        "than 10^6 possible values of its shape (e.g. 'info', 'j.li'): their tokens never "
        "merge with another address but hide the original weakly; to hide them, mask this "
        "column with hash (length >= 32) or redact"
    )


#: (rows of distinct values, reason) pairs an operator reports
Problems = list[tuple[np.ndarray, str]]


def _prefix_bytes(values: pa.Array, prefix: str | None) -> np.ndarray:
    """Per value, how many leading UTF-8 bytes are a kept prefix (see ``prefix_lengths``).

    ``"auto"`` prefixes are ASCII, so bytes and code points agree; a literal prefix is
    compared as bytes (UTF-8 is prefix-free).
    """
    _, offs, buf = utf8_buffers(values)
    offsets = offs - offs[0]
    data = np.frombuffer(buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])]
    n = len(offsets) - 1
    if prefix is None or n == 0 or len(data) == 0:
        return np.zeros(n, dtype=np.int64)
    if prefix == "auto":
        return prefix_lengths(data.astype(np.uint32), offsets, "auto")
    lit = np.frombuffer(prefix.encode("utf-8"), dtype=np.uint8)
    starts = offsets[:-1]
    ok = np.diff(offsets) >= len(lit)
    for i, c in enumerate(lit):  # loop over prefix bytes, not values
        ok &= data[np.minimum(starts + i, len(data) - 1)] == c
    return np.where(ok, len(lit), 0).astype(np.int64)


def _recase(orig: pa.Array, lowered: pa.Array) -> pa.Array:
    """``lowered`` with ASCII letters put back in upper case where ``orig`` has them.

    For e-mail tokens, computed on the lower-cased address (case does not make another
    address) and shown in the input's case pattern. Values whose lower-casing changed
    their byte length (a few non-ASCII letters) stay lower-case.
    """
    _, o_offs, o_buf = utf8_buffers(orig)
    _, t_offs, t_buf = utf8_buffers(lowered)
    o_data = np.frombuffer(o_buf, dtype=np.uint8)[int(o_offs[0]) : int(o_offs[-1])]
    t_data = np.frombuffer(t_buf, dtype=np.uint8)[int(t_offs[0]) : int(t_offs[-1])]
    o_len, t_len = np.diff(o_offs), np.diff(t_offs)
    if len(o_data) != len(t_data) or not (o_len == t_len).all():
        same = np.repeat(o_len == t_len, t_len)
        o_at = np.repeat(o_offs[:-1] - o_offs[0], t_len)
        pos = np.arange(len(t_data)) - np.repeat(t_offs[:-1] - t_offs[0], t_len)
        src = np.zeros(len(t_data), dtype=np.uint8)
        src[same] = o_data[(o_at + pos)[same]]
    else:
        src = o_data
    out = t_data.copy()
    up = (src >= 65) & (src <= 90) & (out >= 97) & (out <= 122)
    out[up] -= 32
    offsets = (t_offs - t_offs[0]).astype(np.int32)
    return pa.StringArray.from_buffers(len(t_len), pa.py_buffer(offsets), pa.py_buffer(out))


def _maybe_cased(values: pa.Array) -> bool:
    """Whether lower-casing could change any value: an ASCII capital, or any non-ASCII
    byte (conservatively). One pass over the bytes, far cheaper than Unicode case tests."""
    _, offs, buf = utf8_buffers(values)
    data = np.frombuffer(buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])]
    return bool(((data - np.uint8(65)) < 26).any() or (data >= 128).any())


def _at_positions(values: pa.Array) -> np.ndarray:
    """Byte position of each value's first ``@`` (its length where it has none)."""
    _, offs, buf = utf8_buffers(values)
    data = np.frombuffer(buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])]
    offsets = offs - offs[0]
    ats = np.flatnonzero(data == 64)
    k = np.searchsorted(ats, offsets[:-1])
    hit = ats[np.minimum(k, max(len(ats) - 1, 0))] if len(ats) else np.zeros(len(k), np.int64)
    found = (k < len(ats)) & (hit < offsets[1:])
    at: np.ndarray = np.where(found, hit - offsets[:-1], np.diff(offsets)).astype(np.int64)
    return at


@register
class Hash(Operator[HashOp]):
    """Keyed PRF (the domain's AES CBC-MAC), hex: irreversible, consistent, fixed length."""

    name = "hash"
    parallel_safe = True

    def __init__(self, spec: HashOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.prf = DeterministicPrf(binding.keyring.derive_token("hash", spec.domain))

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
    """Format-shaped consistent tokens: a keyed permutation of each value's shape (FF1 under
    a key of its own, :mod:`biomask.masking.permute`), or FF1 that unmask reverses when
    ``reversible``.

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
        handle = binding.keyring.derive_token("tokenize", spec.domain)
        self._key_id = handle.key_id
        #: irreversible string tokens: a keyed permutation of each value's shape
        self.perm = ShapePermutation(handle, "tokenize")
        #: irreversible integer tokens: a permutation too (see _integer_tokens)
        self._int_ff1 = FF1(hkdf(handle._secret(), "tokenize/integers", 32), 2)
        self.fpe = (
            ReversibleTokenizer(binding.keyring, spec.domain, spec.prefix, spec.format)
            if spec.reversible
            else None
        )

    @property
    def key_id(self) -> str | None:
        return self._key_id

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
        """Tokens for distinct, non-null values (used by the text operator too); null
        where a value gets none (too small a shape, or FF1 refuses it)."""
        if self.fpe is not None:
            res = self.fpe.encrypt(uniq)
            return pc.if_else(pa.array(res.bad), pa.scalar(None, pa.string()), res.values)
        out, problems = self._shaped(uniq)
        bad = np.zeros(len(uniq), dtype=bool)
        for rows, _ in problems:
            bad |= rows
        return pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), out) if bad.any() else out

    def _shaped(self, uniq: pa.Array) -> tuple[pa.Array, Problems]:
        """Irreversible shaped tokens: the keyed permutation, the check digit recomputed."""
        check = self.spec.format != "shape"
        upto = None
        if check:  # the check digit stays outside the permutation and is recomputed
            _, offs, _ = utf8_buffers(uniq)
            upto = np.diff(offs) - 1
        prefix = self.spec.prefix
        keep = "auto" if prefix == "auto" else _prefix_bytes(uniq, prefix)
        res = self.perm.permute(uniq, keep=keep, upto=upto, tail_in_tweak=not check)
        out = _fix_check_digit(res.values, self.spec.format) if check else res.values
        return out, [(res.small, SMALL_REASON), (res.failed, WALK_REASON)]

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = dictionary_encode(values)
        uniq = enc.dictionary
        if pa.types.is_integer(values.type):
            out, bad, reason = self._integer_tokens(uniq)
            problems = [(bad, reason)]
        else:
            out, problems = self._string_tokens(uniq)
            small = [rows for rows, why in problems if why == SMALL_REASON]
            if small and len(small[0]) and small[0].all():
                self._refuse_small_column()
        bad = np.zeros(len(uniq), dtype=bool)
        for rows, _ in problems:
            bad |= rows
        result = _finish_all(enc, out, problems, ctx)
        # An entity's date offsets are a function of its tokens' text: offer them per
        # distinct value, so date_shift need not find the distinct tokens again.
        nulled = pc.if_else(pa.array(bad), pa.scalar(None, out.type), out) if bad.any() else out
        ctx.memo.put(("tokens", self.binding.column), (enc.indices, nulled.cast(pa.string())))
        return result.cast(values.type)

    def _refuse_small_column(self) -> None:
        """Every value of a batch has too small a shape: a policy mistake, not bad rows.

        Quarantining the whole column would hide it among data errors; the run stops
        before anything is written, naming the rule and the fix.
        """
        b = self.binding
        loc = (
            ("tables", b.table, "columns", b.column)
            if b.policy.is_multi_table
            else ("columns", b.column)
        )
        raise PolicyError(
            f"tokenize on column '{b.column}' of table '{b.table}': every value's shape has "
            "fewer than 10^6 possible values, too few for tokens that never merge two values "
            "(NIST SP 800-38G's minimum for FF1): use longer ids, hash (length >= 32) or "
            "generalize",
            path=b.policy.source,
            line=b.policy.line_of(*loc),
            field=".".join(loc),
        )

    def _string_tokens(self, uniq: pa.Array) -> tuple[pa.Array, Problems]:
        if self.fpe is not None:
            res = self.fpe.encrypt(uniq)
            return res.values, [(res.bad, res.reason)]
        problems: Problems = []
        if self.spec.format != "shape":
            problems.append(
                (
                    ~_check_digit_valid(uniq, self.spec.format),
                    f"not a valid {self.spec.format} number (wrong check digit or characters)",
                )
            )
        out, more = self._shaped(uniq)
        return out, problems + more

    def _integer_tokens(self, uniq: pa.Array) -> tuple[pa.Array, np.ndarray, str]:
        """Integer tokens of the column's own type and sign.

        Always a keyed permutation (:mod:`biomask.masking.integers`), never a PRF: serial
        keys fill their range, and a PRF would merge about a third of them. Irreversible
        tokens use a key of their own, which ``unmask`` never uses.
        """
        if self.fpe is not None:
            res = self.fpe.integers(uniq)
            return res.values, res.bad, res.reason
        out, bad = permute_integers(self._int_ff1, uniq)
        return out, bad, "FF1 cycle walk did not end"

    def reverse(self, values: pa.Array, ctx: OperatorContext, key_id: str) -> pa.Array:
        assert self.fpe is not None
        enc = dictionary_encode(values)
        if pa.types.is_integer(values.type):
            res = self.fpe.integers(enc.dictionary, key_id, decrypt=True)
        else:
            res = self.fpe.decrypt(enc.dictionary, key_id)
        return _finish(enc, res.values, res.bad, res.reason, ctx).cast(values.type)

    def invert(self, uniq: pa.Array) -> pa.Array:
        """The values whose tokens are ``uniq`` (distinct, non-null); null where none is.

        Every token this rule gives is a permutation of its value (FF1, or the keyed
        permutation of shapes and integers), so the key that made a token also undoes it:
        ``erase`` turns a subject's token back into the id to name the subject's key. A
        string that no value of this rule maps to (a small shape, a wrong check digit) is
        null, never a guess.
        """
        if pa.types.is_integer(uniq.type):
            if self.fpe is not None:
                res = self.fpe.integers(uniq, self._key_id, decrypt=True)
                values, bad = res.values, res.bad
            else:
                values, bad = permute_integers(self._int_ff1, uniq, decrypt=True)
        elif self.fpe is not None:
            res = self.fpe.decrypt(uniq, self._key_id)
            values, bad = res.values, res.bad
        else:
            check = self.spec.format != "shape"
            upto = None
            bad = np.zeros(len(uniq), dtype=bool)
            if check:  # the check digit is outside the permutation, recomputed after it
                _, offs, _ = utf8_buffers(uniq)
                upto = np.diff(offs) - 1
                bad |= ~_check_digit_valid(uniq, self.spec.format)
            prefix = self.spec.prefix
            keep = "auto" if prefix == "auto" else _prefix_bytes(uniq, prefix)
            perm = self.perm.permute(
                uniq, keep=keep, upto=upto, tail_in_tweak=not check, decrypt=True
            )
            values = _fix_check_digit(perm.values, self.spec.format) if check else perm.values
            bad |= perm.small | perm.failed
        if bad.any():
            values = pc.if_else(pa.array(bad), pa.scalar(None, values.type), values)
        return values


def _finish_all(
    enc: pa.DictionaryArray, out: pa.Array, problems: Problems, ctx: OperatorContext
) -> pa.Array:
    """:func:`_finish` with a reason per kind of problem (the first one a row has wins)."""
    bad = np.zeros(len(out), dtype=bool)
    for rows, reason in problems:
        new = rows & ~bad
        if new.any():
            hit = pc.is_in(enc.indices, pa.array(np.flatnonzero(new), enc.indices.type))
            ctx.quarantine(hit.fill_null(False), reason)
        bad |= rows
    if bad.any():
        out = pc.if_else(pa.array(bad), pa.scalar(None, out.type), out)
    return expand(out, enc.indices)


def _finish(
    enc: pa.DictionaryArray, out: pa.Array, bad: np.ndarray, reason: str, ctx: OperatorContext
) -> pa.Array:
    """Expand per-distinct results to rows; rows of bad values are nulled and quarantined."""
    if bad.any():
        rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(bad), enc.indices.type))
        ctx.quarantine(rows.fill_null(False), reason)
        out = pc.if_else(pa.array(bad), pa.scalar(None, out.type), out)
    return expand(out, enc.indices)


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

    The local part is a keyed permutation of the lower-cased local part's shape, with the
    lower-cased domain in the tweak (:mod:`biomask.masking.permute`), shown in the input's
    case pattern: ``Isabel.P@Example.org`` in a note and ``isabel.p@example.org`` in a
    column are one address and get one token (in their own case shapes), and two
    addresses that differ other than in case never share a token.

    A local part whose shape has fewer than 10^6 values (four letters or fewer, such as
    ``info`` or ``j.li``) is common, so it is not quarantined as a too-small ``tokenize``
    shape is: it is permuted within its own small space (FF1 on its 2**20 minimum,
    cycle-walked back), so it never merges with another address either, but its token
    hides only as much as that space holds. Lengthening it instead would not be
    collision-free: every longer shape is some other address's own shape. So that the
    user learns it, the distinct addresses of a column with such a local part are counted
    over the whole run (:data:`WEAK_STAT`; the run summary and lineage report them, with
    the fix). A local part with no ASCII letter or digit (nothing to permute) is
    quarantined, as is a domain too short to tokenize with ``keep_domain: false``.

    Counting distinct values across batches is the one piece of state an instance keeps:
    a sorted array of keyed 64-bit digests of the weak addresses' (lower-cased) tokens,
    never the values; it changes no token. Each batch counts only the addresses it adds.
    """

    name = "email"
    parallel_safe = True

    def __init__(self, spec: EmailOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        handle = binding.keyring.derive_token("email", spec.domain)
        self._key_id = handle.key_id
        self.local = ShapePermutation(handle, "email/local")
        self.domain_perm = ShapePermutation(
            binding.keyring.derive_token("email-domain", spec.domain), "email/domain"
        )
        #: digests of the weak addresses seen so far in this run (sorted, distinct)
        self._weak_seen = np.zeros(0, dtype=np.uint64)
        self._weak_lock = threading.Lock()
        self._weak_prf = DeterministicPrf(
            KeyHandle(hkdf(handle._secret(), "email/weak-count", 32), handle.key_id, "email")
        )

    @property
    def key_id(self) -> str | None:
        return self._key_id

    def check(self, dtype: pa.DataType) -> str | None:
        return None if is_string_type(dtype) else "email takes string columns"

    def tokens(self, uniq: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """Tokens for distinct non-null values, and a mask of values that get none."""
        out, problems, _ = self._tokens(uniq)
        bad = np.zeros(len(uniq), dtype=bool)
        for rows, _ in problems:
            bad |= rows
        return out, bad

    def _tokens(self, uniq: pa.Array) -> tuple[pa.Array, Problems, pa.Array]:
        """Tokens of distinct non-null values, why some get none, and the tokens (lower
        case) of the valid addresses whose local part is weak (:attr:`Permuted.weak`).

        Values that are not e-mails get meaningless tokens; their rows are quarantined and
        nulled.
        """
        ok, local_len = _email_layout(uniq)
        valid = bool(ok.all())
        keys = uniq if valid else pc.if_else(pa.array(ok), uniq, "x@invalid.example")
        # most columns hold lower-case ASCII addresses: nothing to fold or restore, and the
        # layout's local-part length (code points) is already the byte position of the @
        cased = _maybe_cased(keys)
        if cased:
            keys = pc.utf8_lower(keys)
        at = local_len if valid and not cased else _at_positions(keys)
        local = self.local.permute(keys, upto=at, tail_in_tweak=True, small_ok=True)
        problems: Problems = [
            (~ok, "not an e-mail address"),
            (
                local.small,
                "e-mail local part without an ASCII letter or digit: nothing to tokenize "
                "(use hash (length >= 32) or redact)",
            ),
            (local.failed, WALK_REASON),
        ]
        if self.spec.keep_domain:
            lower = local.values
        else:
            parts = pc.split_pattern(local.values, "@", max_splits=1)
            domains = pc.list_element(parts, 1)
            dom, dom_problems = self._domain_tokens(domains)
            lower = pc.binary_join_element_wise(pc.list_element(parts, 0), dom, "@")
            problems += dom_problems
        weak = local.weak.copy()
        for rows, _ in problems:
            weak &= ~rows
        weak_tokens = lower.filter(pa.array(weak)) if weak.any() else lower.slice(0, 0)
        return (_recase(uniq, lower) if cased else lower), problems, weak_tokens

    def _count_weak(self, weak_tokens: pa.Array, ctx: OperatorContext) -> None:
        """Add the weak addresses this batch adds to the run's count (:data:`WEAK_STAT`).

        ``weak_tokens`` are distinct within the batch (tokens of distinct values); keyed
        digests make them comparable across batches without holding any value.
        """
        if not len(weak_tokens):
            return
        seeds = self._weak_prf.seeds(weak_tokens)
        digests = np.unique(np.ascontiguousarray(seeds[:, :8]).view(np.uint64).ravel())
        with self._weak_lock:
            seen = self._weak_seen
            new = digests[~np.isin(digests, seen, assume_unique=True)]
            if len(new):
                self._weak_seen = np.union1d(seen, new)
        if len(new):
            b = self.binding
            where = f"{b.table}.{b.column}" if b.policy.is_multi_table else b.column
            ctx.count(f"{WEAK_STAT}{where}", len(new))

    def _domain_tokens(self, domains: pa.Array) -> tuple[pa.Array, Problems]:
        """Lower-cased domains with the part before the last dot permuted, the TLD kept
        (and in the tweak).

        A column's addresses share a handful of domains: each distinct domain is permuted
        once (a 65,536-address batch with 12 domains: 12 FF1 walks, not 65,536).
        """
        enc = dictionary_encode(domains)
        rows = enc.indices.to_numpy(zero_copy_only=False)
        out, problems = self._distinct_domain_tokens(enc.dictionary)
        return expand(out, enc.indices), [(bad[rows], why) for bad, why in problems]

    def _distinct_domain_tokens(self, domains: pa.Array) -> tuple[pa.Array, Problems]:
        _, offs, buf = utf8_buffers(domains)
        data = np.frombuffer(buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])]
        offsets = offs - offs[0]
        dots = np.flatnonzero(data == 46)
        k = np.searchsorted(dots, offsets[1:]) - 1  # last dot before each value's end
        has = (k >= 0) & (dots[np.maximum(k, 0)] >= offsets[:-1]) if len(dots) else k < -1
        last = np.where(has, dots[np.maximum(k, 0)] - offsets[:-1] if len(dots) else 0, 0)
        res = self.domain_perm.permute(domains, upto=last.astype(np.int64), tail_in_tweak=True)
        return res.values, [
            (
                res.small,
                "e-mail domain too short to tokenize without merging two domains: "
                "use keep_domain: true",
            ),
            (res.failed, WALK_REASON),
        ]

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = dictionary_encode(values)
        out, problems, weak_tokens = self._tokens(enc.dictionary)
        self._count_weak(weak_tokens, ctx)
        return _finish_all(enc, out, problems, ctx).cast(values.type)


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
    per_value:
        How many digits of each value change.
    bad:
        Per value: fewer than 4 digits (not a phone number).
    keep:
        Per value, how many leading digits stay (the compiled helper's layout), or None.
    """

    data: np.ndarray
    offsets: np.ndarray
    per_value: np.ndarray
    bad: np.ndarray
    keep: np.ndarray | None = None
    positions: np.ndarray | None = None

    @property
    def at(self) -> np.ndarray:
        """Positions in ``data`` of the digits that change (the national significant
        number, which also keys the PRF, so ``+44 20 7946 0958`` and ``020 7946 0958``
        agree), value after value.

        With the compiled helper they are found only when asked for (the reversible path,
        one value's parts): the tokens take and put the digits without them.
        """
        if self.positions is None:
            native = _native()
            assert native is not None and self.keep is not None
            at = np.empty(int(self.per_value.sum()), dtype=np.int64)
            native.phone_positions(self.offsets, self.data, self.keep, at)
            object.__setattr__(self, "positions", at)
        assert self.positions is not None
        return self.positions

    def national(self) -> pa.Array:
        """The national significant numbers, one string per value."""
        offs = np.zeros(len(self.per_value) + 1, dtype=np.int32)
        np.cumsum(self.per_value, out=offs[1:])
        native = _native()
        if native is not None and self.keep is not None:
            digits = np.empty(int(offs[-1]), dtype=np.uint8)
            native.phone_take(self.offsets, self.data, self.keep, digits)
        else:
            digits = self.data[self.at]
        return pa.StringArray.from_buffers(
            len(self.per_value), pa.py_buffer(offs), pa.py_buffer(digits)
        )

    def replaced(self, digits: np.ndarray) -> pa.Array:
        """The values with the changing digits replaced by ``digits`` (ASCII bytes)."""
        native = _native()
        if native is not None and self.keep is not None:
            out = np.empty(len(self.data), dtype=np.uint8)
            native.phone_put(
                self.offsets, self.data, self.keep, np.ascontiguousarray(digits, np.uint8), out
            )
        else:
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
        return PhoneDigits(data, offsets, per_value, ndig < 4, keep=keep)
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
    return PhoneDigits(data, offsets, per_value, ndig < 4, positions=dpos[change])


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
        handle = binding.keyring.derive_token("phone", spec.domain)
        self._key_id = handle.key_id
        self.perm = ShapePermutation(handle, "phone")

    @property
    def key_id(self) -> str | None:
        return self._key_id

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
        # A keyed permutation of the national numbers of each length (the tweak holds the
        # length only, so every format of one number agrees): no two numbers merge.
        res = self.perm.permute(lay.national())
        _, _, buf = utf8_buffers(res.values)
        digits = np.frombuffer(buf, dtype=np.uint8)[: int(lay.per_value.sum())]
        return lay.replaced(digits), lay.bad | res.small | res.failed

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
        secret = self.binding.keyring.derive_token("ff1", self.spec.domain, key_id)._secret()
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
        enc = dictionary_encode(values)
        lay = phone_digits(enc.dictionary)
        bad = lay.bad.copy()
        digits = self._ff1(
            lay.data[lay.at].astype(np.int64) - 48, lay.per_value, key_id, bad, decrypt=True
        )
        out = lay.replaced((48 + digits).astype(np.uint8))
        return _finish(enc, out, bad, "not a reversible phone token", ctx).cast(values.type)

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        enc = dictionary_encode(values)
        out, bad = self.tokens(enc.dictionary)
        return _finish(
            enc,
            out,
            bad,
            "not a phone number with at least 6 national digits (fewer are too few for a "
            "token that never merges two numbers)",
            ctx,
        ).cast(values.type)
