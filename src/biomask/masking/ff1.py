"""NIST SP 800-38G FF1 format-preserving encryption, vectorized over many values.

FF1 is a 10-round Feistel network whose round function is an AES CBC-MAC over a fixed
block ``P`` (radix, lengths, tweak length) and a block sequence ``Q`` (tweak, round number,
one half of the value). Called value by value that is about twenty tiny AES calls per
value, and Python call overhead dominates. Here every round runs for *all* values of one
length at once:

* ``P`` and the leading blocks of ``Q`` (tweak and padding) are the same for every value,
  so their CBC-MAC state is computed once per (length, tweak) and folded into a template
  of the first block that varies.
* The varying blocks of every value sit in one contiguous buffer and go through AES-ECB
  in one call per block position (one call per round for the usual lengths), chaining
  with numpy XOR in between; the ``S`` expansion blocks ``R xor [j]`` are batched too.
* The numeral arithmetic (NUM, STR, modular addition) is numpy ``uint64`` where the half
  domain ``radix**v`` is below 2**56 (up to 33 decimal digits or 20 alphanumerics per
  value), and exact Python integers beyond, so any length the standard allows is correct.

FF3/FF3-1 are deliberately not offered (NIST's SP 800-38G Rev. 1 drafts withdraw FF3).
The minimum domain of SP 800-38G Rev. 1 is enforced: ``radix ** length >= 1_000_000``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from biomask.masking.shape import _native

__all__ = [
    "FF1",
    "MAX_LENGTH",
    "MIN_DOMAIN",
    "check_domain",
    "decrypt_array",
    "decrypt_strings",
    "encrypt_array",
    "encrypt_strings",
]

#: Smallest domain FF1 may encrypt (NIST SP 800-38G Rev. 1, section 5.2).
MIN_DOMAIN = 1_000_000
#: Largest value length SP 800-38G allows (``maxlen`` <= 2**32).
MAX_LENGTH = 2**32
_MAX_RADIX = 65536
_ROUNDS = 10
#: The uint64 fast path needs ``radix**v`` below this: sums of two residues and the
#: 8-bit-at-a-time reduction of 96-bit ``S`` values then never overflow 64 bits.
_FAST_LIMIT = 1 << 56
#: Rows per chunk on the fast path: small enough that a round's working set (a few
#: arrays of 8 bytes per row plus the 16-byte AES blocks) stays in the CPU caches.
_CHUNK = 16384


def check_domain(radix: int, length: int) -> None:
    """Refuse what FF1 may not encrypt: domains below 10^6 values, and bad lengths.

    Parameters
    ----------
    radix:
        Alphabet size, 2 to 65536.
    length:
        Number of characters (numerals) per value.

    Raises
    ------
    ValueError
        If ``radix ** length < 1_000_000``: a domain that small can be enumerated (or
        attacked through the Feistel structure), which is why NIST SP 800-38G Rev. 1
        forbids it. The message says so and points to the alternatives. Also if the
        radix or length is outside what the standard defines.
    """
    if not 2 <= radix <= _MAX_RADIX:
        raise ValueError(f"FF1 radix must be between 2 and {_MAX_RADIX}, not {radix}")
    if length < 2:
        raise ValueError(f"FF1 needs values of at least 2 characters, not {length}")
    if length > MAX_LENGTH:
        raise ValueError("FF1 values may not be longer than 2^32 characters")
    # radix**length can be astronomically large for long values: compare without it.
    if length < 20 and radix**length < MIN_DOMAIN:
        raise ValueError(
            f"FF1 is refused on a domain of {radix}^{length} = {radix**length:,} values: NIST "
            "SP 800-38G Rev. 1 requires at least 1,000,000 (small domains can be enumerated); "
            "use irreversible tokenize, or a longer field"
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about one (length, tweak) that does not depend on the values.

    ``template`` is the part of ``Q`` that varies per row (from the block holding the round
    byte to the end), with the CBC-MAC state after ``P`` and the constant blocks of ``Q``
    already XORed into its first block, round byte 0 and ``NUM(B)`` zero. A row's first
    varying block is then ``template xor [i] xor NUM(B)`` and needs no chaining of its own.
    """

    u: int
    v: int
    b: int  # bytes of NUM(B) in Q
    d: int  # bytes of S that make y
    mod_u: int
    mod_v: int
    template: bytes
    round_pos: int  # offset of the round byte in ``template``
    fast: bool
    # fast path (template is one block): the block as two big-endian 64-bit words, per round
    hi: tuple[int, ...]
    lo: tuple[int, ...]


class FF1:
    """FF1 with one AES key and one radix, applied to many values per call.

    Parameters
    ----------
    key:
        AES-128/192/256 key (16, 24 or 32 bytes). Kept private: it never appears in
        ``repr``, ``str`` or error messages, and instances refuse to be pickled.
    radix:
        Alphabet size; numerals are the integers ``0 .. radix-1``.

    Notes
    -----
    Instances keep no per-call state (each call makes its own AES context), so one
    instance may be shared between threads.
    """

    __slots__ = ("_key", "_plans", "radix")

    def __init__(self, key: bytes, radix: int) -> None:
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError("FF1 key must be bytes")
        if len(key) not in (16, 24, 32):
            raise ValueError("FF1 keys are 16, 24 or 32 bytes (AES-128/192/256)")
        if isinstance(radix, bool) or not isinstance(radix, int | np.integer):
            raise TypeError("FF1 radix must be an int")
        if not 2 <= radix <= _MAX_RADIX:
            raise ValueError(f"FF1 radix must be between 2 and {_MAX_RADIX}, not {radix}")
        self._key = bytes(key)
        self.radix = int(radix)
        self._plans: dict[tuple[int, bytes], _Plan] = {}

    def __repr__(self) -> str:
        return f"FF1(radix={self.radix}, key=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("FF1 instances hold key material and cannot be pickled")

    # -- public ---------------------------------------------------------------------------
    def encrypt(self, numerals: np.ndarray, tweak: bytes = b"") -> np.ndarray:
        """Encrypt many numeral strings of one length (SP 800-38G Algorithm 7).

        Parameters
        ----------
        numerals:
            2-D integer array, one value per row, numerals in ``[0, radix)``. Callers
            group values by length; each group is one call.
        tweak:
            FF1 tweak (any length below 2^32 bytes), the same for every row.

        Returns
        -------
        numpy.ndarray
            Array of the same shape and dtype with the encrypted numerals.

        Raises
        ------
        ValueError
            For a domain below 10^6 values (see :func:`check_domain`), a non-2-D array or
            numerals outside the radix.
        """
        return self._crypt(numerals, tweak, decrypt=False)

    def decrypt(self, numerals: np.ndarray, tweak: bytes = b"") -> np.ndarray:
        """Invert :meth:`encrypt` (SP 800-38G Algorithm 8); same parameters."""
        return self._crypt(numerals, tweak, decrypt=True)

    def encrypt_bits(self, values: np.ndarray, n: int, tweak: bytes = b"") -> np.ndarray:
        """Radix 2: encrypt the ``n``-bit strings of ``values`` (most significant bit first).

        The same permutation as :meth:`encrypt` on the rows of bits, read back as integers,
        without building the numerals: FF1's halves of a bit string are the value's high
        and low bits. For integer tokens (:mod:`biomask.masking.integers`).

        Parameters
        ----------
        values:
            uint64 array, every value below ``2**n``.
        n:
            Bits per value, 20 to 64 (FF1's 10^6 minimum domain needs 20).
        """
        return self._crypt_bits(values, n, tweak, decrypt=False)

    def decrypt_bits(self, values: np.ndarray, n: int, tweak: bytes = b"") -> np.ndarray:
        """Invert :meth:`encrypt_bits`; same parameters."""
        return self._crypt_bits(values, n, tweak, decrypt=True)

    def _crypt_bits(self, values: np.ndarray, n: int, tweak: bytes, *, decrypt: bool) -> np.ndarray:
        if self.radix != 2:
            raise ValueError("encrypt_bits needs a radix-2 FF1")
        if not 1 <= n <= 64:
            raise ValueError("encrypt_bits takes 1 to 64 bits per value")
        check_domain(2, n)
        x = np.asarray(values, dtype=np.uint64)
        if n < 64 and len(x) and int(x.max()) >> n:
            raise ValueError(f"values must be below 2**{n}")
        plan = self._plan(n, bytes(tweak))
        if not plan.fast:  # a long tweak: the numeral path (same permutation)
            return _from_bits(self._crypt(_to_bits(x, n), bytes(tweak), decrypt=decrypt))
        aes = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        v = np.uint64(plan.v)
        out = np.empty_like(x)
        for start in range(0, len(x), _CHUNK):
            part = x[start : start + _CHUNK]
            a, bb = self._rounds(aes, plan, part >> v, part & np.uint64(plan.mod_v - 1), decrypt)
            out[start : start + _CHUNK] = (a << v) | bb
        return out

    def walk_bits(
        self,
        values: np.ndarray,
        nbits: np.ndarray,
        tweaks: np.ndarray,
        limits: np.ndarray,
        *,
        decrypt: bool = False,
        max_walk: int = 400,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Radix 2, a 16-byte tweak and a domain ``[0, limits[i])`` per value.

        Each value is encrypted as :meth:`encrypt_bits` would with ``nbits[i]`` bits and
        tweak ``bytes(tweaks[i])``, again and again until the result is below
        ``limits[i]`` (cycle walking), which makes it a keyed permutation of exactly
        ``[0, limits[i])``: the shaped tokens of :mod:`biomask.masking.permute` rest on
        this. With ``decrypt`` the walk goes back. The compiled kernel does the whole
        walk in C when it is built; the numpy path below gives the same values.

        Parameters
        ----------
        values:
            uint64, each below its limit.
        nbits:
            int64 bit lengths, 20 to 64, with ``2**nbits[i] >= limits[i]``; 0 means the
            smallest that holds the limit (``bitlen(limits[i] - 1)``, at least 20).
        tweaks:
            uint8 array of shape ``(len(values), 16)``.
        limits:
            uint64 domain sizes (at least 10^6 for a permutation NIST allows).

        Returns
        -------
        (out, bad):
            The permuted values and which walks did not end within ``max_walk`` steps
            (with ``limits[i] > 2**(nbits[i] - 1)`` each step ends the walk with
            probability at least 1/2, so in practice none; smaller limits need
            ``max_walk`` in proportion to ``2**nbits / limit``).
        """
        if self.radix != 2:
            raise ValueError("walk_bits needs a radix-2 FF1")
        x = np.ascontiguousarray(values, dtype=np.uint64).copy()
        nb = np.ascontiguousarray(nbits, dtype=np.int64)
        tw = np.ascontiguousarray(tweaks, dtype=np.uint8).reshape(len(x), 16)
        lim = np.ascontiguousarray(limits, dtype=np.uint64)
        bad = np.zeros(len(x), dtype=np.uint8)
        if len(x) == 0:
            return x, bad.view(bool)
        native = _native()
        if native is not None and len(self._key) == 32:
            native.ff1_walk(self._key, x, nb.copy(), tw, lim, decrypt, bad, max_walk)
            return x, bad.view(bool)
        auto = nb == 0
        if auto.any():
            nb = nb.copy()
            nb[auto] = bit_lengths(lim[auto] - np.uint64(1), at_least=20)
        aes = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        for n in np.unique(nb):
            rows = np.flatnonzero(nb == n)
            plan = self._plan(int(n), bytes(16))
            p_block = (
                bytes([1, 2, 1, 0, 0, 2, _ROUNDS, (int(n) // 2) % 256])
                + int(n).to_bytes(4, "big")
                + (16).to_bytes(4, "big")
            )
            state0 = np.frombuffer(aes.update(p_block), dtype=np.uint8)
            s1 = _ecb(aes, tw[rows] ^ state0[None, :]).view(">u8").reshape(-1, 2)
            hi_all = s1[:, 0].astype(np.uint64)
            lo_all = s1[:, 1].astype(np.uint64)
            v = np.uint64(plan.v)
            todo = np.arange(len(rows))
            for _ in range(max_walk):
                part = x[rows[todo]]
                a, bb = self._rounds(
                    aes,
                    plan,
                    part >> v,
                    part & np.uint64(plan.mod_v - 1),
                    decrypt,
                    (hi_all[todo], lo_all[todo]),
                )
                x[rows[todo]] = (a << v) | bb
                todo = todo[x[rows[todo]] >= lim[rows[todo]]]
                if not len(todo):
                    break
            bad[rows[todo]] = 1
        return x, bad.view(bool)

    # -- planning -------------------------------------------------------------------------
    def _plan(self, n: int, tweak: bytes) -> _Plan:
        cached = self._plans.get((n, tweak))
        if cached is not None:
            return cached
        radix, t = self.radix, len(tweak)
        u, v = n // 2, n - n // 2
        mod_u, mod_v = radix**u, radix**v
        # b = ceil(ceil(v * log2(radix)) / 8), exactly: ceil(log2(radix**v)) is the bit
        # length of radix**v - 1 (floats would be wrong for some large radix**v).
        b = ((mod_v - 1).bit_length() + 7) // 8
        d = 4 * ((b + 3) // 4) + 4
        p_block = (
            bytes([1, 2, 1])
            + radix.to_bytes(3, "big")
            + bytes([_ROUNDS, u % 256])
            + n.to_bytes(4, "big")
            + t.to_bytes(4, "big")
        )
        pad = (-t - b - 1) % 16
        q = tweak + bytes(pad + 1 + b)  # round byte and NUM(B) zero
        var_start = (t + pad) // 16 * 16  # the block holding the round byte
        aes = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        state = aes.update(p_block)
        for j in range(0, var_start, 16):
            state = aes.update(_xor(state, q[j : j + 16]))
        template = _xor(state, q[var_start : var_start + 16]) + q[var_start + 16 :]
        round_pos = t + pad - var_start
        fast = mod_v < _FAST_LIMIT
        hi: list[int] = []
        lo: list[int] = []
        if fast:  # then b <= 7: round byte and NUM(B) share the one varying block
            whole = int.from_bytes(template, "big")
            for i in range(_ROUNDS):
                w = whole ^ (i << (8 * b))
                hi.append(w >> 64)
                lo.append(w & (2**64 - 1))
        plan = _Plan(u, v, b, d, mod_u, mod_v, template, round_pos, fast, tuple(hi), tuple(lo))
        if len(self._plans) < 64:
            self._plans[(n, tweak)] = plan
        return plan

    # -- core -----------------------------------------------------------------------------
    def _crypt(self, numerals: np.ndarray, tweak: bytes, *, decrypt: bool) -> np.ndarray:
        x = np.asarray(numerals)
        if x.ndim != 2:
            raise ValueError("numerals must be a 2-D array: one value per row")
        if x.dtype.kind not in "iu":
            raise ValueError("numerals must be an integer array")
        if not isinstance(tweak, bytes | bytearray):
            raise TypeError("FF1 tweak must be bytes")
        if len(tweak) >= MAX_LENGTH:
            raise ValueError("FF1 tweaks must be shorter than 2^32 bytes")
        rows, n = x.shape
        check_domain(self.radix, n)
        if rows == 0:
            return x.copy()
        if (x.dtype.kind == "i" and int(x.min()) < 0) or int(x.max()) >= self.radix:
            raise ValueError(f"numerals must be in [0, {self.radix})")
        plan = self._plan(n, bytes(tweak))
        aes = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        out = np.empty_like(x)
        if plan.fast:
            step = _CHUNK
            for start in range(0, rows, step):
                sl = slice(start, start + step)
                out[sl] = self._fast(aes, plan, x[sl], decrypt)
        else:
            out[:] = self._exact(aes, plan, x, decrypt)
        return out

    def _fast(self, aes: CipherContext, plan: _Plan, x: np.ndarray, decrypt: bool) -> np.ndarray:
        """All rounds on uint64 halves (``radix**v < 2**56``, so ``b <= 7``, ``d <= 12``)."""
        radix, u = self.radix, plan.u
        a, bb = self._rounds(aes, plan, _num(x[:, :u], radix), _num(x[:, u:], radix), decrypt)
        res = np.empty(x.shape, dtype=x.dtype)
        _str(a, radix, res[:, :u])
        _str(bb, radix, res[:, u:])
        return res

    def _rounds(
        self,
        aes: CipherContext,
        plan: _Plan,
        a: np.ndarray,
        bb: np.ndarray,
        decrypt: bool,
        rows_tpl: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ten Feistel rounds on NUM(A), NUM(B) as uint64 (the fast path's core).

        ``rows_tpl`` gives each row a template of its own (the two big-endian words of the
        CBC-MAC state after its own tweak), for :meth:`walk_bits`; the round byte is then
        XORed in here.
        """
        rows = len(a)
        d = plan.d
        blocks = np.empty((rows, 2), dtype=">u8")
        raw = np.empty(rows * 16 + 16, dtype=np.uint8)  # update_into wants len + 15
        r = raw[: rows * 16].view(">u8").reshape(rows, 2)
        src_in = blocks.data.cast("B")
        dst = raw.data
        y = np.empty(rows, dtype=np.uint64)
        tmp = np.empty(rows, dtype=np.uint64)
        for i in range(_ROUNDS - 1, -1, -1) if decrypt else range(_ROUNDS):
            mod = np.uint64(plan.mod_u if i % 2 == 0 else plan.mod_v)
            if rows_tpl is None:
                blocks[:, 0] = plan.hi[i]
                np.bitwise_xor(a if decrypt else bb, np.uint64(plan.lo[i]), out=tmp)
            else:
                blocks[:, 0] = rows_tpl[0]
                np.bitwise_xor(a if decrypt else bb, rows_tpl[1], out=tmp)
                tmp ^= np.uint64(i << (8 * plan.b))
            blocks[:, 1] = tmp
            aes.update_into(src_in, dst)
            # y = NUM(first d bytes of R) mod radix**m
            y[:] = r[:, 0]
            np.remainder(y, mod, out=y)
            if d == 12:  # shift in the next 4 bytes of R, 8 bits at a time (no overflow)
                tmp[:] = r[:, 1]
                for shift in (56, 48, 40, 32):
                    np.left_shift(y, np.uint64(8), out=y)
                    y |= (tmp >> np.uint64(shift)) & np.uint64(0xFF)
                    np.remainder(y, mod, out=y)
            if decrypt:  # C = (NUM(B) - y) mod radix**m; B = A; A = C
                c = bb + mod
                c -= y
                np.remainder(c, mod, out=c)
                a, bb = c, a
            else:  # C = (NUM(A) + y) mod radix**m; A = B; B = C
                c = a + y
                np.remainder(c, mod, out=c)
                a, bb = bb, c
        return a, bb

    def _exact(self, aes: CipherContext, plan: _Plan, x: np.ndarray, decrypt: bool) -> np.ndarray:
        """All rounds with Python-integer halves: any length, any radix (long values)."""
        rows = x.shape[0]
        radix, u, b, d = self.radix, plan.u, plan.b, plan.d
        a = _num_exact(x[:, :u], radix)
        bb = _num_exact(x[:, u:], radix)
        tpl = np.frombuffer(plan.template, dtype=np.uint8)
        width = len(tpl)
        extra = (d + 15) // 16 - 1
        counters = np.zeros((extra, 16), dtype=np.uint8)
        for j in range(extra):
            counters[j] = np.frombuffer((j + 1).to_bytes(16, "big"), dtype=np.uint8)
        for i in range(_ROUNDS - 1, -1, -1) if decrypt else range(_ROUNDS):
            mod = plan.mod_u if i % 2 == 0 else plan.mod_v
            src = a if decrypt else bb
            q = np.empty((rows, width), dtype=np.uint8)
            q[:] = tpl
            q[:, plan.round_pos] ^= i
            num_b = b"".join(int(s).to_bytes(b, "big") for s in src)
            q[:, width - b :] ^= np.frombuffer(num_b, dtype=np.uint8).reshape(rows, b)
            state = _ecb(aes, q[:, :16])
            for j in range(16, width, 16):
                state = _ecb(aes, state ^ q[:, j : j + 16])
            if extra:
                more = _ecb(aes, (state[:, None, :] ^ counters[None, :, :]).reshape(-1, 16))
                s = np.concatenate([state, more.reshape(rows, extra * 16)], axis=1)
            else:
                s = state
            flat = np.ascontiguousarray(s[:, :d]).tobytes()
            ys = [int.from_bytes(flat[k : k + d], "big") for k in range(0, rows * d, d)]
            if decrypt:
                c = [(int(p) - y) % mod for p, y in zip(bb, ys, strict=True)]
                a, bb = c, a
            else:
                c = [(int(p) + y) % mod for p, y in zip(a, ys, strict=True)]
                a, bb = bb, c
        res = np.empty(x.shape, dtype=x.dtype)
        res[:, :u] = _str_exact(a, radix, u)
        res[:, u:] = _str_exact(bb, radix, plan.v)
        return res


# -- numeral helpers ----------------------------------------------------------------------
def bit_lengths(values: np.ndarray, *, at_least: int = 0) -> np.ndarray:
    """Bit length of each uint64, exactly (the bits below the highest smeared and counted)."""
    v = np.asarray(values, dtype=np.uint64).copy()
    for shift in (1, 2, 4, 8, 16, 32):
        v |= v >> np.uint64(shift)
    bits: np.ndarray = np.maximum(np.bitwise_count(v).astype(np.int64), at_least)
    return bits


def _to_bits(values: np.ndarray, n: int) -> np.ndarray:
    """The ``n``-bit numerals of each uint64, most significant first, shape ``(rows, n)``."""
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(octets, axis=1)[:, 64 - n :].astype(np.int64)


def _from_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_bits`."""
    full = np.zeros((len(bits), 64), dtype=np.uint8)
    full[:, 64 - bits.shape[1] :] = bits
    return np.packbits(full, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def _xor(p: bytes, q: bytes) -> bytes:
    return (int.from_bytes(p, "big") ^ int.from_bytes(q, "big")).to_bytes(16, "big")


def _ecb(aes: CipherContext, blocks: np.ndarray) -> np.ndarray:
    """AES-ECB over every 16-byte row at once, straight between numpy buffers."""
    data = np.ascontiguousarray(blocks, dtype=np.uint8)
    out = np.empty(data.size + 16, dtype=np.uint8)
    aes.update_into(data.data.cast("B"), out.data)
    return out[: data.size].reshape(data.shape)


def _num(x: np.ndarray, radix: int) -> np.ndarray:
    """NUM_radix of each row as uint64 (Horner over the columns; fits by construction)."""
    acc = x[:, 0].astype(np.uint64)
    r = np.uint64(radix)
    for col in range(1, x.shape[1]):
        acc *= r
        acc += x[:, col].astype(np.uint64)
    return acc


def _str(val: np.ndarray, radix: int, out: np.ndarray) -> None:
    """STR_m_radix of each uint64 into ``out`` (rows, m), most significant numeral first.

    Peels ``radix**k`` (below 2**16) at a time and expands each piece through a table of
    its ``k`` numerals, which needs m/k divisions instead of m.
    """
    m = out.shape[1]
    k = 1
    while radix ** (k + 1) <= 1 << 16 and k < m:
        k += 1
    table = _digits_table(radix, k)
    chunk = np.uint64(radix**k)
    v = val.copy()
    col = m
    while col > 0:
        w = min(k, col)
        piece = v % chunk if col > k else v
        out[:, col - w : col] = table[piece.astype(np.intp), k - w :]
        if col > k:
            v //= chunk
        col -= w


_TABLES: dict[tuple[int, int], np.ndarray] = {}


def _digits_table(radix: int, k: int) -> np.ndarray:
    """``table[x]`` = the ``k`` numerals of ``x`` in ``radix`` (``radix**k <= 65536``)."""
    key = (radix, k)
    table = _TABLES.get(key)
    if table is None:
        vals = np.arange(radix**k, dtype=np.int64)
        table = np.empty((radix**k, k), dtype=np.uint16)
        for j in range(k - 1, -1, -1):
            table[:, j] = vals % radix
            vals //= radix
        _TABLES[key] = table
    return table


def _num_exact(x: np.ndarray, radix: int) -> list[int]:
    acc = np.zeros(x.shape[0], dtype=object)
    for col in range(x.shape[1]):
        acc = acc * radix + x[:, col].astype(object)
    return [int(a) for a in acc]


def _str_exact(vals: list[int], radix: int, m: int) -> np.ndarray:
    v = np.empty(len(vals), dtype=object)
    v[:] = vals
    out = np.empty((len(vals), m), dtype=np.int64)
    for col in range(m - 1, -1, -1):
        out[:, col] = (v % radix).astype(np.int64)
        v = v // radix
    return out


# -- strings and Arrow columns ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Alphabet:
    symbols: str
    ascii_lut: np.ndarray | None  # byte -> numeral (-1: not in the alphabet)
    ascii_syms: np.ndarray | None  # numeral -> byte


_ALPHABETS: dict[str, _Alphabet] = {}


def _alphabet(cipher: FF1, alphabet: str) -> _Alphabet:
    if len(alphabet) != cipher.radix:
        raise ValueError(f"alphabet has {len(alphabet)} characters, radix is {cipher.radix}")
    found = _ALPHABETS.get(alphabet)
    if found is not None:
        return found
    if len(set(alphabet)) != len(alphabet):
        raise ValueError("alphabet has repeated characters")
    lut = syms = None
    if alphabet.isascii():
        syms = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8).copy()
        lut = np.full(256, -1, dtype=np.int16)
        lut[syms] = np.arange(len(alphabet), dtype=np.int16)
    found = _Alphabet(alphabet, lut, syms)
    if len(_ALPHABETS) < 256:
        _ALPHABETS[alphabet] = found
    return found


def _crypt_flat(
    cipher: FF1,
    alpha: _Alphabet,
    body: np.ndarray,
    offsets: np.ndarray,
    tweak: bytes,
    *,
    decrypt: bool,
    rows_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Encrypt back-to-back ASCII values (``body`` bytes, ``offsets`` into it), by length.

    Values of one length become one 2-D numeral block; when every value has the same
    length the body *is* that block (a reshape, no gather). Returns the new body.
    """
    assert alpha.ascii_lut is not None and alpha.ascii_syms is not None
    lengths = np.diff(offsets)
    out = body.copy()
    if len(lengths) == 0:
        return out
    sel = lengths if rows_mask is None else lengths[rows_mask]
    if len(sel) == 0:
        return out
    lo, hi = int(sel.min()), int(sel.max())
    if lo == hi and rows_mask is None:
        width = lo
        nums = alpha.ascii_lut[body.reshape(len(lengths), width)]
        if int(nums.min()) < 0:
            raise ValueError("a value has characters outside the alphabet")
        res = cipher.decrypt(nums, tweak) if decrypt else cipher.encrypt(nums, tweak)
        flat: np.ndarray = alpha.ascii_syms[res].reshape(-1)
        return flat
    for width in np.unique(sel).tolist():
        pick = lengths == width
        if rows_mask is not None:
            pick &= rows_mask
        idx = offsets[:-1][pick][:, None] + np.arange(width)[None, :]
        nums = alpha.ascii_lut[body[idx]]
        if int(nums.min()) < 0:
            raise ValueError("a value has characters outside the alphabet")
        res = cipher.decrypt(nums, tweak) if decrypt else cipher.encrypt(nums, tweak)
        out[idx] = alpha.ascii_syms[res]
    return out


def _strings(
    cipher: FF1, values: Sequence[str], alphabet: str, tweak: bytes, *, decrypt: bool
) -> list[str]:
    alpha = _alphabet(cipher, alphabet)
    if len(values) == 0:
        return []
    joined = "".join(values)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if alpha.ascii_lut is not None and joined.isascii():
        body = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        text = _crypt_flat(cipher, alpha, body, offsets, tweak, decrypt=decrypt)
        res = text.tobytes().decode("ascii")
    else:  # non-ASCII alphabet or values: code points, one dict lookup per distinct char
        cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        uniq, inv = np.unique(cps, return_inverse=True)
        index = {c: i for i, c in enumerate(alphabet)}
        try:
            code = np.array([index[chr(c)] for c in uniq.tolist()], dtype=np.int64)
        except KeyError:
            raise ValueError("a value has characters outside the alphabet") from None
        nums = code[inv.reshape(-1)]
        symbols = np.array([ord(c) for c in alphabet], dtype=np.uint32)
        out = np.empty_like(cps)
        for width in np.unique(lengths).tolist():
            rows = np.flatnonzero(lengths == width)
            idx = offsets[rows][:, None] + np.arange(width)[None, :]
            block = nums[idx]
            got = cipher.decrypt(block, tweak) if decrypt else cipher.encrypt(block, tweak)
            out[idx] = symbols[got]
        res = out.tobytes().decode("utf-32-le")
    if int(lengths.min()) == int(lengths.max()):
        w = int(lengths[0])
        return [res[k : k + w] for k in range(0, len(res), w)]
    bounds = offsets.tolist()
    return [res[s:e] for s, e in pairwise(bounds)]


def encrypt_strings(
    cipher: FF1, values: Sequence[str], alphabet: str, tweak: bytes = b""
) -> list[str]:
    """Encrypt strings over ``alphabet`` (its length is the radix), grouped by length.

    Parameters
    ----------
    cipher:
        The FF1 instance (key and radix).
    values:
        Strings whose characters are all in ``alphabet``; lengths may differ (each length
        is one vectorized call, and each must give a domain of at least 10^6 values).
    alphabet:
        The numerals in order: ``alphabet[k]`` is numeral ``k``. ASCII alphabets take a
        byte lookup-table path; others work on code points.
    tweak:
        FF1 tweak, the same for every value.

    Returns
    -------
    list[str]
        The encrypted strings, in order, each the length of its input.
    """
    return _strings(cipher, values, alphabet, tweak, decrypt=False)


def decrypt_strings(
    cipher: FF1, values: Sequence[str], alphabet: str, tweak: bytes = b""
) -> list[str]:
    """Invert :func:`encrypt_strings`; same parameters."""
    return _strings(cipher, values, alphabet, tweak, decrypt=True)


def _array(cipher: FF1, values: Any, alphabet: str, tweak: bytes, *, decrypt: bool) -> Any:
    if isinstance(values, pa.ChunkedArray):
        chunks = [_array(cipher, c, alphabet, tweak, decrypt=decrypt) for c in values.chunks]
        return pa.chunked_array(chunks, type=values.type)
    arr: pa.Array = values
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError("FF1 columns must be Arrow string arrays")
    alpha = _alphabet(cipher, alphabet)
    bufs = arr.buffers()
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset : arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else None
    first, last = (int(offsets[0]), int(offsets[-1])) if len(arr) else (0, 0)
    body = data[first:last] if data is not None else np.zeros(0, dtype=np.uint8)
    if alpha.ascii_lut is None or (body.size and int(body.max()) >= 128):
        # Non-ASCII: per-value strings (correct, slower; alphabets here are rare).
        py = arr.to_pylist()
        keep = [s for s in py if s is not None]
        done = iter(_strings(cipher, keep, alphabet, tweak, decrypt=decrypt))
        return pa.array([None if s is None else next(done) for s in py], type=arr.type)
    rel = offsets - first
    mask = None
    if arr.null_count:
        mask = arr.is_valid().to_numpy(zero_copy_only=False)
    new_body = _crypt_flat(cipher, alpha, body, rel, tweak, decrypt=decrypt, rows_mask=mask)
    out = pa.Array.from_buffers(
        arr.type,
        len(arr),
        [None, pa.py_buffer(rel.astype(off_type)), pa.py_buffer(new_body)],
        null_count=0,
    )
    if mask is not None:
        out = pc.if_else(arr.is_valid(), out, pa.scalar(None, type=arr.type))
    return out


def encrypt_array(cipher: FF1, values: Any, alphabet: str, tweak: bytes = b"") -> Any:
    """Encrypt an Arrow string array (or chunked array) over ``alphabet``.

    Arrow in, Arrow out, without Python strings: for ASCII alphabets the UTF-8 data
    buffer is mapped to numerals through a 256-entry table, encrypted group by group of
    equal length, and mapped back into a new data buffer with the same offsets. Nulls
    stay null.

    Parameters
    ----------
    cipher, alphabet, tweak:
        As for :func:`encrypt_strings`.
    values:
        ``pa.StringArray``/``pa.LargeStringArray`` or a chunked array of them.
    """
    return _array(cipher, values, alphabet, tweak, decrypt=False)


def decrypt_array(cipher: FF1, values: Any, alphabet: str, tweak: bytes = b"") -> Any:
    """Invert :func:`encrypt_array`; same parameters."""
    return _array(cipher, values, alphabet, tweak, decrypt=True)
