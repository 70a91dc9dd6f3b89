"""Shaped tokens that never merge two values: a keyed permutation of each value's shape.

A shaped token keeps a value's length, character classes, case, separators and kept
prefix (``BIO-41937913`` -> ``BIO-73015542``). Drawing the new characters from a keyed
PRF would merge distinct values by the birthday bound (20,000 ids shaped ``SUBJ-######``
lose about 200 subjects that way), which silently joins different people together. So
the characters are instead a *permutation* of the shape's space, and distinct values get
distinct tokens by construction, in every batch, file and run with the same key:

1. The variable characters of a value (ASCII digits, radix 10; ASCII letters, radix 26 in
   their own case) are read as one mixed-radix number ``x`` in ``[0, M)``, where ``M`` is
   the number of values of that shape (``SUBJ-######`` has ``M = 10**6``).
2. ``x`` is encrypted with FF1 (NIST SP 800-38G) at radix 2 on ``bitlen(M - 1)`` bits and
   cycle-walked back into ``[0, M)`` (:meth:`biomask.masking.ff1.FF1.walk_bits`), under a
   key of its own (never the key ``unmask`` uses) and a per-value tweak: a keyed MAC of the
   value's *descriptor*, the value with each variable character replaced by its class and
   every kept character (prefix, separators, other characters, an e-mail's ``@domain``)
   as it is. So ``ABCDEFGH`` and ``abcdefgh``, or ``SUBJ-123456`` and ``SITE-123456``,
   are encrypted under unrelated permutations.
3. The result is written back as characters of the same classes.

Values of one descriptor share one permutation of their space, and values of different
descriptors differ in a kept character or a class, which their tokens keep: hence no two
distinct values share a token. A space above 2**63.5 (more than 19 digits or 13 letters)
is cut into chunks of at most 13 positions, each permuted in turn, twice, with the other
chunks' current values folded into its tweak (an unbalanced Feistel network whose
rounds are FF1 permutations; every step is invertible, so the whole is a permutation).

What stays visible: equality (the same value always gives the same token), the length,
the character class of every position and every kept character. Letters and digits
outside ASCII are kept as they are (they are part of the tweak, not permuted), so a value
made only of them has nothing to permute.

A shape with fewer than 10^6 values (NIST's minimum domain for FF1; e.g. four letters,
or five digits) is too small for a permutation worth the name: a few known pairs, or
simple enumeration, would reveal it. Such values are reported (:attr:`Permuted.small`)
and the operators quarantine their rows with that reason, before anything is written.

All of it works on the UTF-8 bytes of the whole Arrow column: ASCII never occurs inside a
multi-byte character, so keeping every non-ASCII byte keeps every non-ASCII character, and
replacing ASCII by ASCII keeps every offset. The FF1 walk runs in the compiled kernel
where it is built (a numpy fallback gives the same tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import NoReturn

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import DeterministicPrf, hkdf
from biomask.masking.ff1 import FF1, MIN_DOMAIN, _ecb
from biomask.masking.shape import (
    DIGIT,
    KEEP,
    LOWER,
    UPPER,
    _native,
    prefix_lengths,
    utf8_buffers,
)

__all__ = ["MIN_SPACE", "Permuted", "ShapePermutation", "byte_classes"]

#: smallest shape space that gets a token (NIST SP 800-38G's minimum FF1 domain)
MIN_SPACE = MIN_DOMAIN
#: positions per chunk of a long value: 26**13 < 2**62, and 7..13 positions per chunk
_CHUNK = 13
#: a space up to this many bits is one FF1 walk; above, it is cut into chunks
_ONE_WALK_BITS = 63.5

_TABLE = np.zeros(256, dtype=np.uint8)
_TABLE[48:58] = DIGIT
_TABLE[65:91] = UPPER
_TABLE[97:123] = LOWER
_BASE = np.array([0, 48, 65, 97], dtype=np.uint8)
_RADIX = np.array([1, 10, 26, 26], dtype=np.uint64)
_LOG10 = np.array([0.0, 1.0, math.log10(26), math.log10(26)])


def byte_classes(data: np.ndarray) -> np.ndarray:
    """KEEP/DIGIT/UPPER/LOWER per UTF-8 byte: only ASCII letters and digits vary."""
    out: np.ndarray = _TABLE[data]
    return out


@dataclass(frozen=True)
class Permuted:
    """Tokens (or, decrypting, originals) of distinct values, and which could not be made.

    Attributes
    ----------
    values:
        One string per input value; meaningless where ``small`` or ``failed``.
    small:
        The value's shape holds fewer than 10^6 values (:data:`MIN_SPACE`), or the value
        has no ASCII letter or digit at all (nothing to permute, so the token would be
        the value).
    failed:
        A cycle walk did not end (probability below 2**-400; in practice never).
    weak:
        Permuted, with ``small_ok``, within a shape of fewer than 10^6 values: distinct
        from every other value's token, but hiding only as much as that small space holds.
        All False without ``small_ok``.
    """

    values: pa.Array
    small: np.ndarray
    failed: np.ndarray
    weak: np.ndarray


class ShapePermutation:
    """The keyed permutation of shapes for one operator and domain.

    Parameters
    ----------
    handle:
        The domain's token key (from the keyring's token key, so rotation changes no
        token). Two keys are derived from it: the FF1 key and the tweak MAC key; a third
        mixes chunks of long values.
    label:
        What the tokens are for (``"tokenize"``, ``"email/local"``...), part of the HKDF
        info, so two operators of one domain permute independently.
    """

    __slots__ = ("_ff1", "_mix", "_tweak")

    def __init__(self, handle: KeyHandle, label: str) -> None:
        secret = handle._secret()
        self._ff1 = FF1(hkdf(secret, f"shape/{label}/ff1", 32), 2)
        self._tweak = DeterministicPrf(
            KeyHandle(hkdf(secret, f"shape/{label}/tweak", 32), handle.key_id, label)
        )
        self._mix = hkdf(secret, f"shape/{label}/mix", 32)

    def __repr__(self) -> str:
        return "ShapePermutation(<keys hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("biomask primitives cannot be pickled: open the keyring in each process")

    def permute(
        self,
        values: pa.Array,
        *,
        keep: np.ndarray | str | None = None,
        upto: np.ndarray | None = None,
        tail_in_tweak: bool = True,
        small_ok: bool = False,
        decrypt: bool = False,
    ) -> Permuted:
        """Shaped tokens of a null-free string array of distinct values.

        Parameters
        ----------
        values:
            The values (string or large string).
        keep:
            Per value, how many leading *bytes* are kept (a prefix); or ``"auto"``: 1-6
            upper-case ASCII letters and a separator (``SUBJ-``), as
            :func:`biomask.masking.shape.prefix_lengths` finds them.
        upto:
            Per value, how many leading bytes may vary; the rest is kept (an e-mail's
            ``@domain``, a check digit).
        tail_in_tweak:
            Whether the kept tail past ``upto`` is part of the tweak as it is (an e-mail's
            domain: yes) or only its length (a check digit, recomputed afterwards: no).
        small_ok:
            Permute values of small shapes too (fewer than 10^6 values; e-mail local parts,
            where quarantining ``info@`` would be worse): FF1 still runs on its minimum of
            2**20 values and the walk brings each value back into its own small space,
            so they never merge either; what a small shape hides is only as much as its
            size. Values with no ASCII letter or digit stay ``small``.
        decrypt:
            Invert the permutation (tests, and a proof that it is one).
        """
        n = len(values)
        empty = np.zeros(n, dtype=bool)
        if n == 0:
            return Permuted(values.cast(pa.string()), empty, empty, empty)
        arr, offs, buf = utf8_buffers(values)
        offsets = np.ascontiguousarray(offs - offs[0])
        data = np.frombuffer(buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])]
        lengths = np.diff(offsets)
        auto = isinstance(keep, str)
        if auto and keep != "auto":
            raise ValueError("keep takes per-value byte counts, None or 'auto'")
        if auto and _native() is None:
            keep = prefix_lengths(data.astype(np.uint32), offsets, "auto")
            auto = False
        keep_a = np.zeros(n, np.int64) if keep is None or auto else np.asarray(keep, dtype=np.int64)
        upto_a = lengths if upto is None else np.asarray(upto, dtype=np.int64)
        keep_a, upto_a = np.ascontiguousarray(keep_a), np.ascontiguousarray(upto_a)
        hide = not tail_in_tweak
        native = _native()
        layout: _Layout | None = None
        if native is not None:
            desc = np.empty(len(data), dtype=np.uint8)
            x = np.empty(n, dtype=np.uint64)
            space = np.empty(n, dtype=np.uint64)
            flags = np.empty(n, dtype=np.uint8)
            cap = len(data) // 13 + n + 1
            cx = np.empty(cap, dtype=np.uint64)
            cs = np.empty(cap, dtype=np.uint64)
            nchunks = np.empty(n, dtype=np.int64)
            native.shape_scan(
                offsets,
                data,
                keep_a,
                upto_a,
                hide,
                _MAXA,
                desc,
                x,
                space,
                flags,
                cx,
                cs,
                nchunks,
                auto,
            )
            cstart = np.cumsum(nchunks) - nchunks
        else:
            layout = _layout(data, offsets, keep_a, upto_a, hide)
            desc, flags = layout.desc, layout.flags
            x = np.zeros(n, dtype=np.uint64)
            space = np.ones(n, dtype=np.uint64)
            for rows, idx in layout.groups((flags == _ONE) | (flags == _SMALL)):
                x[rows], space[rows] = _horner(layout.digits[idx], layout.radix[idx])
            nchunks = np.where(flags == _LONG, -(-layout.count // _CHUNK), 0).astype(np.int64)
            cstart = np.cumsum(nchunks) - nchunks
            cx = np.zeros(int(nchunks.sum()), dtype=np.uint64)
            cs = np.ones(int(nchunks.sum()), dtype=np.uint64)
            for rows, idx in layout.groups(flags == _LONG):
                bounds = _bounds(idx.shape[1])
                at = cstart[rows][:, None] + np.arange(len(bounds) - 1)[None, :]
                for j, (a, b) in enumerate(pairwise(bounds)):
                    cx[at[:, j]], cs[at[:, j]] = _horner(
                        layout.digits[idx[:, a:b]], layout.radix[idx[:, a:b]]
                    )
        tweaks = self._tweak.seeds(
            pa.LargeBinaryArray.from_buffers(
                pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(desc)]
            )
        )
        failed = np.zeros(n, dtype=bool)
        weak = np.zeros(n, dtype=bool)
        if small_ok:
            tiny = np.flatnonzero((flags == _SMALL) & (space > 1))
            weak[tiny] = True
            if len(tiny):
                # expected steps 2**20 / space; 64 times that fails with chance e**-64
                steps = int(64 * (1 << 20) // int(space[tiny].min())) + 1
                done, bad = self._ff1.walk_bits(
                    x[tiny],
                    np.full(len(tiny), 20, dtype=np.int64),
                    tweaks[tiny],
                    space[tiny],
                    decrypt=decrypt,
                    max_walk=max(steps, 400),
                )
                x[tiny] = done
                failed[tiny[bad]] = True
                flags = flags.copy()
                flags[tiny] = _ONE
        is_one = flags == _ONE
        if small_ok:
            is_one &= space >= MIN_SPACE  # the small ones walked above
        if is_one.all():  # the common case: one walk for every value, no gathers
            x, failed = self._ff1.walk_bits(x, _auto_bits(n), tweaks, space, decrypt=decrypt)
        elif is_one.any():
            one = np.flatnonzero(is_one)
            done, bad = self._ff1.walk_bits(
                x[one], _auto_bits(len(one)), tweaks[one], space[one], decrypt=decrypt
            )
            x[one] = done
            failed[one[bad]] = True
        long_rows = np.flatnonzero(flags == _LONG)
        for k in np.unique(nchunks[long_rows]):
            rows = long_rows[nchunks[long_rows] == k]
            at = cstart[rows][:, None] + np.arange(k)[None, :]
            cx[at] = self._feistel(cx[at], cs[at], tweaks[rows], decrypt, failed, rows)
        out = data.copy()
        if native is not None:
            native.shape_place(offsets, data, keep_a, upto_a, x, flags, cx, nchunks, out)
        else:
            assert layout is not None
            for rows, idx in layout.groups(flags == _ONE):
                layout.digits[idx] = _digits(x[rows], layout.radix[idx])
            for rows, idx in layout.groups(flags == _LONG):
                bounds = _bounds(idx.shape[1])
                at = cstart[rows][:, None] + np.arange(len(bounds) - 1)[None, :]
                for j, (a, b) in enumerate(pairwise(bounds)):
                    layout.digits[idx[:, a:b]] = _digits(cx[at[:, j]], layout.radix[idx[:, a:b]])
            fl = flags[layout.owner_of_var]
            mine = (fl == _ONE) | (fl == _LONG)
            put = layout.vidx[mine]
            out[put] = layout.digits[mine].astype(np.uint8) + _BASE[layout.cls[put]]
        wide = pa.types.is_large_string(arr.type)
        out_offs = offsets if wide else offsets.astype(np.int32)
        kind = pa.LargeStringArray if wide else pa.StringArray
        res = kind.from_buffers(n, pa.py_buffer(out_offs), pa.py_buffer(out))
        return Permuted(res.cast(pa.string()) if wide else res, flags == _SMALL, failed, weak)

    # -- long values: chunks, an unbalanced Feistel network of FF1 walks ----------------
    def _feistel(
        self,
        xs: np.ndarray,
        spaces: np.ndarray,
        tweaks: np.ndarray,
        decrypt: bool,
        failed: np.ndarray,
        rows: np.ndarray,
    ) -> np.ndarray:
        """Permute the ``k`` chunks of each row (columns of ``xs``, each below its space).

        One pass over the chunks; step ``j`` walks chunk ``j`` with FF1 under a tweak that
        folds the value's own tweak, ``j`` and every other chunk's current number (AES-256
        CBC-MAC under the mix key): the chunks before ``j`` as already permuted, those
        after as they came. So every output chunk depends on every input chunk. Each step
        is a permutation of chunk ``j`` given the others, so the whole is a permutation;
        decryption runs the steps backwards.
        """
        xs = xs.copy()
        k = xs.shape[1]
        steps = [(0, j) for j in range(k)]
        aes = Cipher(algorithms.AES(self._mix), modes.ECB()).encryptor()
        for p, j in reversed(steps) if decrypt else steps:
            tw = tweaks.copy()
            tw[:, 0] ^= np.uint8(p + 1)
            tw[:, 1] ^= np.uint8(j % 256)
            tw[:, 2] ^= np.uint8(j // 256 % 256)
            tw = _ecb(aes, tw)
            for i in range(k):
                if i != j:
                    blk = np.zeros((len(tw), 16), dtype=np.uint8)
                    blk[:, 8:] = xs[:, i].astype(">u8").view(np.uint8).reshape(-1, 8)
                    tw = _ecb(aes, tw ^ blk)
            col, bad = self._ff1.walk_bits(
                xs[:, j], _auto_bits(len(tw)), tw, spaces[:, j], decrypt=decrypt
            )
            xs[:, j] = col
            failed[rows[bad]] = True
        return xs


def _bounds(length: int) -> list[int]:
    """Chunk edges over ``length`` varying positions: ``ceil(length / 13)`` near-equal parts."""
    k = -(-length // _CHUNK)
    return [length * j // k for j in range(k + 1)]


_ONE, _SMALL, _LONG, _EMPTY = 0, 1, 2, 3


def _max_digits() -> np.ndarray:
    """Per number of letters b (0..13), the most digits a for which 10**a * 26**b <= 2**63.5.

    Exact integers (squared: ``(10**a * 26**b)**2 <= 2**127``), so the compiled kernel and
    numpy agree on which values are one FF1 walk and which are cut into chunks.
    """
    out = []
    for b in range(14):
        a = 0
        while (10 ** (a + 1) * 26**b) ** 2 <= 2**127:
            a += 1
        out.append(a if (10**a * 26**b) ** 2 <= 2**127 else -1)
    return np.array(out, dtype=np.int64)


_MAXA = _max_digits()


def _small(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``10**a * 26**b < 10**6``, exactly (as the compiled kernel decides it)."""
    small: np.ndarray = (
        ((b == 0) & (a < 6))
        | ((b == 1) & (a <= 4))
        | ((b == 2) & (a <= 3))
        | ((b == 3) & (a <= 1))
        | ((b == 4) & (a == 0))
    )
    return small


@dataclass
class _Layout:
    """The numpy view of shaped values: classes, descriptor, varying bytes and flags."""

    cls: np.ndarray
    desc: np.ndarray
    vidx: np.ndarray
    owner_of_var: np.ndarray
    count: np.ndarray
    digits: np.ndarray
    radix: np.ndarray
    flags: np.ndarray

    def groups(self, which: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, positions into digits) for the selected values, by number of positions."""
        starts = np.cumsum(self.count) - self.count
        out = []
        for length in np.unique(self.count[which]):
            if length == 0:
                continue
            rows = np.flatnonzero(which & (self.count == length))
            out.append((rows, starts[rows][:, None] + np.arange(length)[None, :]))
        return out


def _layout(
    data: np.ndarray, offsets: np.ndarray, keep: np.ndarray, upto: np.ndarray, hide: bool
) -> _Layout:
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    cls = _TABLE[data]
    cls[pos < np.repeat(keep, lengths)] = KEEP
    tail = pos >= np.repeat(upto, lengths)
    cls[tail] = KEEP
    var = cls != KEEP
    desc = np.where(var, cls, data)
    if hide:
        desc[tail] = 0
    vidx = np.flatnonzero(var)
    vown = owner[vidx]
    vcls = cls[vidx]
    a = np.bincount(vown[vcls == DIGIT], minlength=n)
    b = np.bincount(vown[vcls != DIGIT], minlength=n)
    flags = np.full(n, _ONE, dtype=np.uint8)
    flags[(b > 13) | (a > _MAXA[np.minimum(b, 13)])] = _LONG
    flags[_small(a, b)] = _SMALL
    flags[lengths == 0] = _EMPTY
    digits = (data[vidx] - _BASE[vcls]).astype(np.uint64)
    return _Layout(cls, desc, vidx, vown, a + b, digits, _RADIX[vcls], flags)


def _horner(d: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixed-radix number of each row (most significant position first), and its space."""
    x = np.zeros(len(d), dtype=np.uint64)
    space = np.ones(len(d), dtype=np.uint64)
    for col in range(d.shape[1]):
        x *= r[:, col]
        x += d[:, col]
        space *= r[:, col]
    return x, space


def _digits(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_horner`: the numerals of each row."""
    out = np.empty(r.shape, dtype=np.uint64)
    x = x.copy()
    for col in range(r.shape[1] - 1, -1, -1):
        out[:, col] = x % r[:, col]
        x //= r[:, col]
    return out


def _auto_bits(n: int) -> np.ndarray:
    """``nbits`` for :meth:`FF1.walk_bits` meaning "the fewest bits that hold the space"
    (at least 20): the kernel finds them from each limit, so numpy need not."""
    return np.zeros(n, dtype=np.int64)
