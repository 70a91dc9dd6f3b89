"""NIST SP 800-38G FF1 format-preserving encryption, vectorized over many values.

FF1 is a 10-round Feistel network whose round function is AES CBC-MAC over a fixed block
P (radix, lengths, tweak length) and a block Q (tweak, round number, half of the value).
Called value by value that is ~20 tiny AES calls per value; here every round runs for *all*
values of one length at once: the CBC-MAC advances one block position per AES-ECB call
over the whole batch, and the numeral arithmetic is numpy on uint64 where the half-domain
fits (radix**m below 2**55, e.g. up to 16 decimal digits per half), with an exact Python-
integer fallback beyond. FF3/FF3-1 are deliberately not offered (NIST's 2025 draft removes
them).

The minimum domain of SP 800-38G Rev. 1 is enforced: ``radix ** length >= 1_000_000``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "FF1",
    "MIN_DOMAIN",
    "check_domain",
    "decrypt_array",
    "decrypt_strings",
    "encrypt_array",
    "encrypt_strings",
]

MIN_DOMAIN = 1_000_000
_FAST_LIMIT = 1 << 55  # uint64 Horner steps (acc * 256 + 255) stay exact below this


def check_domain(radix: int, length: int) -> None:
    """Refuse domains smaller than 10^6 values (NIST SP 800-38G Rev. 1, section 5.2)."""
    if not 2 <= radix <= 65536:
        raise ValueError(f"FF1 radix must be between 2 and 65536, not {radix}")
    if length < 2:
        raise ValueError("FF1 needs at least 2 characters to encrypt")
    if radix**length < MIN_DOMAIN:
        raise ValueError(
            f"FF1 is refused on a domain of {radix}^{length} = {radix**length:,} values: NIST "
            "SP 800-38G Rev. 1 requires at least 1,000,000 (small domains can be enumerated); "
            "use irreversible tokenize, or a longer field"
        )


class FF1:
    """FF1 with one AES key (16, 24 or 32 bytes) and one radix.

    Parameters
    ----------
    key:
        AES-128/192/256 key. Kept private; never printed.
    radix:
        Number of symbols in the alphabet (numerals are ``0 .. radix-1``).
    """

    __slots__ = ("_ecb_key", "radix")

    def __init__(self, key: bytes, radix: int) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("FF1 keys are 16, 24 or 32 bytes (AES-128/192/256)")
        if not 2 <= radix <= 65536:
            raise ValueError(f"FF1 radix must be between 2 and 65536, not {radix}")
        self._ecb_key = bytes(key)
        self.radix = radix

    def __repr__(self) -> str:
        return f"FF1(radix={self.radix}, key=<hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("FF1 instances hold key material and cannot be pickled")

    # -- public ---------------------------------------------------------------------------
    def encrypt(self, numerals: np.ndarray, tweak: bytes = b"") -> np.ndarray:
        """Encrypt a 2-D array of numerals, one value per row (all rows one length)."""
        return self._crypt(numerals, tweak, decrypt=False)

    def decrypt(self, numerals: np.ndarray, tweak: bytes = b"") -> np.ndarray:
        """Invert :meth:`encrypt`."""
        return self._crypt(numerals, tweak, decrypt=True)

    # -- internals ------------------------------------------------------------------------
    def _aes(self, blocks: np.ndarray) -> np.ndarray:
        """AES-ECB over every 16-byte row at once, straight between numpy buffers."""
        data = np.ascontiguousarray(blocks, dtype=np.uint8)
        out = np.empty(data.size + 15, dtype=np.uint8)
        enc = Cipher(algorithms.AES(self._ecb_key), modes.ECB()).encryptor()
        enc.update_into(data.reshape(-1).data, out.data)
        return out[: data.size].reshape(data.shape)

    def _crypt(self, numerals: np.ndarray, tweak: bytes, *, decrypt: bool) -> np.ndarray:
        x = np.asarray(numerals)
        if x.ndim != 2:
            raise ValueError("numerals must be a 2-D array: one value per row")
        rows, n = x.shape
        radix = self.radix
        check_domain(radix, n)
        if rows == 0:
            return x.copy()
        if x.min() < 0 or x.max() >= radix:
            raise ValueError(f"numerals must be in [0, {radix})")
        u, v = n // 2, n - n // 2
        b = math.ceil(math.ceil(v * math.log2(radix)) / 8)
        d = 4 * math.ceil(b / 4) + 4
        t = len(tweak)
        p_block = (
            bytes([1, 2, 1])
            + radix.to_bytes(3, "big")
            + bytes([10, u % 256])
            + n.to_bytes(4, "big")
            + t.to_bytes(4, "big")
        )
        state0 = self._aes(np.frombuffer(p_block, dtype=np.uint8).reshape(1, 16))[0]
        pad = (-t - b - 1) % 16
        q_len = t + pad + 1 + b
        q_prefix = np.frombuffer(tweak + bytes(pad), dtype=np.uint8)
        fast = radix**v < _FAST_LIMIT and (1 << (8 * b)) <= (1 << 64)
        a = _Num(x[:, :u], radix, fast)
        bb = _Num(x[:, u:], radix, fast)
        rounds = range(9, -1, -1) if decrypt else range(10)
        q = np.empty((rows, q_len), dtype=np.uint8)
        q[:, : t + pad] = q_prefix
        for i in rounds:
            # In encryption the round function reads B; in decryption it reads A.
            src = a if decrypt else bb
            q[:, t + pad] = i
            q[:, t + pad + 1 :] = src.to_bytes(b)
            state = self._aes(q[:, :16] ^ state0)
            for j in range(16, q_len, 16):
                state = self._aes(state ^ q[:, j : j + 16])
            s = state
            if d > 16:
                extra = [
                    self._aes(state ^ np.frombuffer(k.to_bytes(16, "big"), dtype=np.uint8))
                    for k in range(1, (d + 15) // 16)
                ]
                s = np.concatenate([state, *extra], axis=1)
            m = u if i % 2 == 0 else v
            y = _Num.from_bytes(s[:, :d], radix, m, fast)
            if decrypt:
                c = bb.sub_mod(y, m)
                bb, a = a, c
            else:
                c = a.add_mod(y, m)
                a, bb = bb, c
        return np.concatenate([a.numerals(u), bb.numerals(v)], axis=1).astype(x.dtype)


class _Num:
    """One integer per row: uint64 on the fast path, Python ints otherwise."""

    __slots__ = ("fast", "radix", "val")

    def __init__(self, numerals: np.ndarray | None, radix: int, fast: bool) -> None:
        self.radix = radix
        self.fast = fast
        if numerals is None:
            return
        if fast:
            acc = np.zeros(numerals.shape[0], dtype=np.uint64)
            for col in range(numerals.shape[1]):
                acc = acc * np.uint64(radix) + numerals[:, col].astype(np.uint64)
            self.val: np.ndarray = acc
        else:
            acc_o = np.zeros(numerals.shape[0], dtype=object)
            for col in range(numerals.shape[1]):
                acc_o = acc_o * radix + numerals[:, col].astype(object)
            self.val = acc_o

    @classmethod
    def _wrap(cls, val: np.ndarray, radix: int, fast: bool) -> _Num:
        out = cls(None, radix, fast)
        out.val = val
        return out

    @classmethod
    def from_bytes(cls, s: np.ndarray, radix: int, m: int, fast: bool) -> _Num:
        """NUM(S) mod radix**m (only the residue matters to the Feistel addition)."""
        mod = radix**m
        if fast and mod < _FAST_LIMIT and s.shape[1] == 8:  # d = 8: S is one uint64
            whole = np.ascontiguousarray(s).view(">u8").reshape(-1).astype(np.uint64)
            return cls._wrap(whole % np.uint64(mod), radix, True)
        if fast and mod < _FAST_LIMIT:
            acc = np.zeros(s.shape[0], dtype=np.uint64)
            md = np.uint64(mod)
            for col in range(s.shape[1]):
                acc = (acc * np.uint64(256) + s[:, col].astype(np.uint64)) % md
            return cls._wrap(acc, radix, True)
        vals = np.array([int.from_bytes(r.tobytes(), "big") % mod for r in s], dtype=object)
        return cls._wrap(vals, radix, False)

    def _as(self, other: _Num) -> tuple[np.ndarray, np.ndarray, bool]:
        if self.fast and other.fast:
            return self.val, other.val, True
        return self.val.astype(object), other.val.astype(object), False

    def add_mod(self, y: _Num, m: int) -> _Num:
        a, b, fast = self._as(y)
        mod = self.radix**m
        if fast:
            md = np.uint64(mod)
            return _Num._wrap((a % md + b % md) % md, self.radix, mod < _FAST_LIMIT)
        return _Num._wrap((a + b) % mod, self.radix, False)

    def sub_mod(self, y: _Num, m: int) -> _Num:
        a, b, fast = self._as(y)
        mod = self.radix**m
        if fast:
            md = np.uint64(mod)
            return _Num._wrap((a % md + md - b % md) % md, self.radix, mod < _FAST_LIMIT)
        return _Num._wrap((a - b) % mod, self.radix, False)

    def to_bytes(self, b: int) -> np.ndarray:
        """Big-endian ``b``-byte representation of each row's integer."""
        if self.fast and b <= 8:
            be = self.val.astype(">u8").view(np.uint8).reshape(-1, 8)
            return be[:, 8 - b :]
        out = np.empty((len(self.val), b), dtype=np.uint8)
        for r, v in enumerate(self.val):
            out[r] = np.frombuffer(int(v).to_bytes(b, "big"), dtype=np.uint8)
        return out

    def numerals(self, m: int) -> np.ndarray:
        """STR_m_radix: ``m`` numerals per row, most significant first."""
        out = np.empty((len(self.val), m), dtype=np.int64)
        v = self.val.copy()
        r = np.uint64(self.radix) if self.fast else self.radix
        for col in range(m - 1, -1, -1):
            out[:, col] = (v % r).astype(np.int64)
            v = v // r
        return out


def _alphabet_index(alphabet: str) -> dict[str, int]:
    index = {c: i for i, c in enumerate(alphabet)}
    if len(index) != len(alphabet):
        raise ValueError("alphabet has repeated characters")
    return index


def _strings(
    cipher: FF1, values: Sequence[str], alphabet: str, tweak: bytes, *, decrypt: bool
) -> list[str]:
    if len(alphabet) != cipher.radix:
        raise ValueError(f"alphabet has {len(alphabet)} characters, radix is {cipher.radix}")
    index = _alphabet_index(alphabet)
    out: list[str] = [""] * len(values)
    by_len: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        by_len.setdefault(len(v), []).append(i)
    codes = np.full(0x110000 if max(map(ord, alphabet)) > 0xFFFF else 0x10000, -1, np.int64)
    for c, i in index.items():
        codes[ord(c)] = i
    lookup = np.array([ord(c) for c in alphabet], dtype=np.uint32)
    for n, rows in by_len.items():
        text = "".join([values[r] for r in rows])
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        nums = codes[np.minimum(cps, len(codes) - 1)].reshape(len(rows), n)
        if (nums < 0).any():
            raise ValueError("a value has characters outside the alphabet")
        res = cipher.decrypt(nums, tweak) if decrypt else cipher.encrypt(nums, tweak)
        joined = lookup[res.reshape(-1)].tobytes().decode("utf-32-le")
        for k, r in enumerate(rows):
            out[r] = joined[k * n : (k + 1) * n]
    return out


def encrypt_strings(
    cipher: FF1, values: Sequence[str], alphabet: str, tweak: bytes = b""
) -> list[str]:
    """Encrypt strings over ``alphabet`` (its length is the radix), grouped by length."""
    return _strings(cipher, values, alphabet, tweak, decrypt=False)


def decrypt_strings(
    cipher: FF1, values: Sequence[str], alphabet: str, tweak: bytes = b""
) -> list[str]:
    """Invert :func:`encrypt_strings`."""
    return _strings(cipher, values, alphabet, tweak, decrypt=True)


def _array(cipher: FF1, values: Any, alphabet: str, tweak: bytes, *, decrypt: bool) -> Any:
    from biomask.masking.shape import codepoints, from_codepoints

    if len(alphabet) != cipher.radix:
        raise ValueError(f"alphabet has {len(alphabet)} characters, radix is {cipher.radix}")
    _alphabet_index(alphabet)
    cps, offsets = codepoints(values)
    lookup = np.full(0x110000, -1, dtype=np.int64)
    symbols = np.array([ord(c) for c in alphabet], dtype=np.uint32)
    lookup[symbols] = np.arange(len(alphabet))
    nums = lookup[cps]
    if (nums < 0).any():
        raise ValueError("a value has characters outside the alphabet")
    lengths = np.diff(offsets)
    out = cps.copy()
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        idx = offsets[rows][:, None] + np.arange(length)[None, :]
        block = nums[idx]
        res = cipher.decrypt(block, tweak) if decrypt else cipher.encrypt(block, tweak)
        out[idx] = symbols[res]
    return from_codepoints(out, offsets)


def encrypt_array(cipher: FF1, values: Any, alphabet: str, tweak: bytes = b"") -> Any:
    """Encrypt a null-free Arrow string array over ``alphabet``: Arrow in, Arrow out."""
    return _array(cipher, values, alphabet, tweak, decrypt=False)


def decrypt_array(cipher: FF1, values: Any, alphabet: str, tweak: bytes = b"") -> Any:
    """Invert :func:`encrypt_array`."""
    return _array(cipher, values, alphabet, tweak, decrypt=True)
