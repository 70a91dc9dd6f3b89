"""Reversible, format-preserving tokens on Arrow string arrays (FF1 underneath).

Every letter stays a letter of the same case and every digit a digit, *position by
position*; separators, fixed prefixes and (with ``format``) the check digit stay outside
the encryption. Values are grouped by their class pattern (e.g. ``AA9999999``); a pattern
that is all digits or all letters is one FF1 call at radix 10 or 26, and a mixed pattern
is read as one mixed-radix integer and encrypted with binary FF1 and cycle walking (Black
and Rogaway), which keeps each position in its class exactly. The tweak is the domain
name, so equal values in different domains give unrelated tokens.

FF1 is refused on a value whose variable part has fewer than 10^6 possible values (NIST SP
800-38G Rev. 1): such rows go to quarantine with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from biomask.keys import Keyring
from biomask.masking.checkdigits import icao_digits, luhn_digits
from biomask.masking.ff1 import FF1, MIN_DOMAIN
from biomask.masking.integers import permute_integers
from biomask.masking.shape import (
    DIGIT,
    KEEP,
    LOWER,
    UPPER,
    char_classes,
    codepoints,
    from_codepoints,
    prefix_lengths,
)

__all__ = ["FpeResult", "ReversibleTokenizer"]

_BASE = {DIGIT: 48, UPPER: 65, LOWER: 97}
_RADIX = {DIGIT: 10, UPPER: 26, LOWER: 26}
_MAX_WALK = 200  # cycle-walking rounds; the expected number is below 2


@dataclass
class FpeResult:
    """Tokens (or originals) for distinct values, and which values could not be handled."""

    values: pa.Array
    bad: np.ndarray
    reason: str


class ReversibleTokenizer:
    """FF1 tokens for one domain.

    Parameters
    ----------
    keyring:
        Keys come from ``keyring.derive_token("ff1", domain, key_id)`` (the token key
        unless ``key_id``).
    domain:
        The token domain (also the FF1 tweak).
    prefix:
        Fixed prefix handling, as for shaped tokens (``"auto"``, a literal, or None).
    fmt:
        ``"shape"``, ``"icao_document"`` or ``"luhn"`` (last character is a check digit,
        recomputed on the token and required to be valid on the input).
    """

    def __init__(self, keyring: Keyring, domain: str, prefix: str | None, fmt: str) -> None:
        self.keyring = keyring
        self.domain = domain
        self.prefix = prefix
        self.fmt = fmt
        self.tweak = domain.encode()

    def _ciphers(self, key_id: str | None) -> dict[int, FF1]:
        secret = self.keyring.derive_token("ff1", self.domain, key_id)._secret()
        return {r: FF1(secret, r) for r in (2, 10, 26)}

    def encrypt(self, uniq: pa.Array, key_id: str | None = None) -> FpeResult:
        """Tokens for distinct non-null values (primary key unless ``key_id``)."""
        return self._run(uniq, key_id, decrypt=False)

    def decrypt(self, uniq: pa.Array, key_id: str) -> FpeResult:
        """Originals for distinct tokens, with the key that made them."""
        return self._run(uniq, key_id, decrypt=True)

    def integers(
        self, uniq: pa.Array, key_id: str | None = None, *, decrypt: bool = False
    ) -> FpeResult:
        """FF1 tokens (or, with ``decrypt``, originals) for distinct non-null integers.

        Same Arrow type and sign (:mod:`biomask.masking.integers`), under the domain's
        FF1 key.
        """
        cipher = self._ciphers(key_id)[2]
        values, bad = permute_integers(cipher, uniq, decrypt=decrypt)
        return FpeResult(values, bad, "FF1 cycle walk did not end")

    def _run(self, uniq: pa.Array, key_id: str | None, *, decrypt: bool) -> FpeResult:
        ciphers = self._ciphers(key_id)
        cps, offsets = codepoints(uniq)
        n = len(offsets) - 1
        lengths = np.diff(offsets)
        cls = char_classes(cps)
        keep = prefix_lengths(cps, offsets, self.prefix)
        pos = np.arange(len(cps)) - np.repeat(offsets[:-1], lengths)
        cls[pos < np.repeat(keep, lengths)] = KEEP
        bad = np.zeros(n, dtype=bool)
        reason = "FF1 domain smaller than 10^6 values (NIST SP 800-38G); use irreversible tokenize"
        check = self.fmt in ("icao_document", "luhn")
        if check:
            last = offsets[1:] - 1
            has = lengths > 1
            cls[last[has]] = KEEP
            bad |= ~has
        out = cps.copy()
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            if length == 0:
                continue
            idx = offsets[rows][:, None] + np.arange(length)[None, :]
            pats, inverse = _patterns(cls[idx])
            for p_i, pat in enumerate(pats):
                sel = rows[inverse.reshape(-1) == p_i]
                var = np.flatnonzero(pat != KEEP)
                if len(var) == 0:
                    bad[sel] = True
                    continue
                radices = np.array([_RADIX[int(c)] for c in pat[var]], dtype=object)
                domain = int(np.prod(radices))
                if domain < MIN_DOMAIN:
                    bad[sel] = True
                    continue
                at = offsets[sel][:, None] + var[None, :]
                bases = np.array([_BASE[int(c)] for c in pat[var]], dtype=np.int64)
                nums = cps[at].astype(np.int64) - bases[None, :]
                res = _crypt(ciphers, nums, radices, domain, self.tweak, decrypt=decrypt)
                out[at] = (res + bases[None, :]).astype(np.uint32)
        if check:
            bad |= self._check_digits(out, offsets, lengths, cps, decrypt)
            reason = (
                f"FF1 domain smaller than 10^6 values, or not a valid {self.fmt} number "
                "(wrong check digit or characters)"
            )
        return FpeResult(from_codepoints(out, offsets), bad, reason)

    def _check_digits(
        self,
        out: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        src: np.ndarray,
        decrypt: bool,
    ) -> np.ndarray:
        bad = np.zeros(len(lengths), dtype=bool)
        fn = icao_digits if self.fmt == "icao_document" else luhn_digits
        for length in np.unique(lengths):
            if length < 2:
                continue
            rows = np.flatnonzero(lengths == length)
            idx = offsets[rows][:, None] + np.arange(length)[None, :]
            given = src[idx]
            body_in = np.clip(given[:, :-1], 0, 255).astype(np.uint8)
            valid = fn(body_in) == given[:, -1].astype(np.int64)
            valid &= (given < 128).all(axis=1)
            body_out = np.clip(out[idx][:, :-1], 0, 255).astype(np.uint8)
            digit = fn(body_out)
            ok = valid & (digit >= 0)
            out[idx[ok, -1]] = digit[ok].astype(np.uint32)
            bad[rows[~ok]] = True
        return bad


def _patterns(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct class patterns of equal-length rows, and each row's pattern index.

    Up to 32 positions pack into one uint64 (2 bits per class), so grouping is a 1-D
    unique instead of a row-wise sort.
    """
    if classes.shape[1] <= 32:
        shifts = (2 * np.arange(classes.shape[1])).astype(np.uint64)
        code = (classes.astype(np.uint64) << shifts[None, :]).sum(axis=1, dtype=np.uint64)
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        return classes[first], inverse.reshape(-1)
    pats, inverse = np.unique(classes, axis=0, return_inverse=True)
    return pats, inverse.reshape(-1)


def _crypt(
    ciphers: dict[int, FF1],
    nums: np.ndarray,
    radices: np.ndarray,
    domain: int,
    tweak: bytes,
    *,
    decrypt: bool,
) -> np.ndarray:
    """Encrypt rows of numerals with per-position radices (same pattern for every row)."""
    first = int(radices[0])
    if all(int(r) == first for r in radices):
        c = ciphers[first]
        return c.decrypt(nums, tweak) if decrypt else c.encrypt(nums, tweak)
    # mixed radix: one integer per row, binary FF1, cycle-walk back into [0, domain)
    bits = (domain - 1).bit_length()
    vals = np.zeros(len(nums), dtype=object)
    for j, r in enumerate(radices):
        vals = vals * int(r) + nums[:, j].astype(object)
    c = ciphers[2]
    todo = np.ones(len(vals), dtype=bool)
    for _ in range(_MAX_WALK):
        b = _to_bits(vals[todo], bits)
        b = c.decrypt(b, tweak) if decrypt else c.encrypt(b, tweak)
        vals[todo] = _from_bits(b)
        todo = np.array([v >= domain for v in vals], dtype=bool)
        if not todo.any():
            break
    out = np.empty(nums.shape, dtype=np.int64)
    for j in range(len(radices) - 1, -1, -1):
        r = int(radices[j])
        out[:, j] = (vals % r).astype(np.int64)
        vals = vals // r
    return out


def _to_bits(vals: np.ndarray, bits: int) -> np.ndarray:
    out = np.empty((len(vals), bits), dtype=np.int64)
    v = vals.copy()
    for j in range(bits - 1, -1, -1):
        out[:, j] = (v % 2).astype(np.int64)
        v = v // 2
    return out


def _from_bits(b: np.ndarray) -> np.ndarray:
    vals = np.zeros(len(b), dtype=object)
    for j in range(b.shape[1]):
        vals = vals * 2 + b[:, j].astype(object)
    return vals
