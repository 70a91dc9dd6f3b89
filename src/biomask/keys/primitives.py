"""Deterministic primitives built on key handles.

These are the *raw* building blocks; the safe recipes are the masking operators. Every
primitive here is **deterministic** on purpose (same key, same input, same output), which
is what keeps tokens consistent across files, batches, processes and Ray workers without a
shared token table. Deterministic means equal inputs are visible as equal outputs, so these
primitives are for tokens, never for encrypting templates (see the AEAD in
:mod:`biomask.masking.encrypt`).

Performance: each *distinct* value's seed is an AES CBC-MAC computed for all values of a
batch together (one AES-ECB call per 16-byte block position), and anything longer than the
16-byte seed is expanded with a single AES-ECB call over all values at once (a
counter-mode keystream), because one big block-cipher call is orders of magnitude faster
than many small ones.

Where the package was built with a C compiler, the keys package's compiled helper
:mod:`biomask.keys._prf` does the same work in one pass over the Arrow buffers (the
CBC-MAC still batched over 256 values per AES call, the keystream 256 blocks per call),
about ten times faster than the numpy code, which stays as the fallback with byte-identical
output. It is loaded by :func:`biomask._native.load`: ``BIOMASK_NATIVE_KERNELS=0`` forces
the fallback, ``BIOMASK_REQUIRE_NATIVE=1`` makes a missing build an error;
:func:`native_available` says which one runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from biomask._native import KERNELS_SWITCH, load
from biomask.keys.handles import KeyHandle

__all__ = ["DeterministicPrf", "hkdf", "native_available"]


#: the compiled helper of this package
PRF_HELPER = "biomask.keys._prf"


def _native() -> ModuleType | None:
    """The compiled PRF when it is built and not switched off (``BIOMASK_NATIVE_KERNELS=0``,
    read on every call so the tests can compare both paths), else None."""
    return load(PRF_HELPER, KERNELS_SWITCH)


def native_available() -> bool:
    """Whether the compiled PRF is in use (not switched off by ``BIOMASK_NATIVE_KERNELS=0``).

    It covers :meth:`DeterministicPrf.seeds` and :meth:`DeterministicPrf.stream` (so
    :meth:`DeterministicPrf.integers` too); masking's and lineage's helpers say so for
    themselves (:func:`biomask.masking.shape.native_available`).
    """
    return _native() is not None


def hkdf(secret: bytes, info: str, length: int = 32) -> bytes:
    """HKDF-SHA256 with a fixed, public salt; ``info`` separates domains and purposes."""
    return HKDF(
        algorithm=SHA256(), length=length, salt=b"biomask/hkdf/v1", info=info.encode()
    ).derive(secret)


class DeterministicPrf:
    """A keyed pseudo-random function over byte strings, batched.

    Parameters
    ----------
    handle:
        The domain key. Two sub-keys are derived from it: one for the CBC-MAC that gives
        each value its seed, and one for the AES counter-mode keystream expansion.

    Notes
    -----
    The seed of a value is AES-256 CBC-MAC over a length block followed by the value,
    zero-padded. Prepending the length makes the message set prefix-free, which is what
    makes CBC-MAC a PRF on variable-length inputs (Bellare, Kilian, Rogaway). Its point
    here is speed: the MAC of *all* values advances one block position per AES-ECB call,
    so a batch of a hundred thousand short values costs a handful of block-cipher calls
    instead of a hundred thousand hash calls.
    """

    __slots__ = ("_aes", "_mac_key", "key_id")

    def __init__(self, handle: KeyHandle) -> None:
        secret = handle._secret()
        self._mac_key = hkdf(secret, "prf/cbc-mac", 32)
        self._aes = hkdf(secret, "prf/aes-ctr", 32)
        self.key_id = handle.key_id

    def __repr__(self) -> str:
        return f"DeterministicPrf(key_id={self.key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("biomask primitives cannot be pickled: open the keyring in each process")

    def seeds(self, values: Sequence[bytes] | pa.Array) -> np.ndarray:
        """16 pseudo-random bytes per value, shape ``(len(values), 16)``, dtype uint8.

        ``values`` may be a list of bytes or an Arrow string/binary array (read zero-copy).
        """
        offs, data = _binary_buffers(values)
        n = len(offs) - 1
        if n == 0:
            return np.zeros((0, 16), dtype=np.uint8)
        native = _native()
        if native is not None:
            out = np.empty((n, 16), dtype=np.uint8)
            native.cbc_mac(self._mac_key, np.ascontiguousarray(offs), data, out)
            return out
        lens = np.diff(offs)
        nb = (lens + 15) // 16
        first = np.zeros((n, 16), dtype=np.uint8)
        first[:, :8] = lens.astype(">u8").view(np.uint8).reshape(n, 8)
        first[:, 8:] = np.frombuffer(b"bm-prf-1", dtype=np.uint8)
        ecb = Cipher(algorithms.AES(self._mac_key), modes.ECB()).encryptor()
        state = np.frombuffer(ecb.update(first.tobytes()), dtype=np.uint8).reshape(n, 16)
        state = state.copy()
        if len(data) == 0:
            return state
        col = np.arange(16, dtype=np.int64)
        last = len(data) - 1
        for i in range(int(nb.max()) if n else 0):
            rows = np.flatnonzero(nb > i) if i else np.flatnonzero(nb > 0)
            pos = 16 * i + col
            idx = np.minimum(offs[rows, None] + pos[None, :], last)
            blk = np.where(pos[None, :] < lens[rows, None], data[idx], 0).astype(np.uint8)
            blk ^= state[rows]
            state[rows] = np.frombuffer(ecb.update(blk.tobytes()), dtype=np.uint8).reshape(-1, 16)
        return state

    def stream(self, values: Sequence[bytes] | pa.Array, length: int) -> np.ndarray:
        """``length`` pseudo-random bytes per value, shape ``(len(values), length)``.

        The keystream is AES-256 in counter mode keyed by the PRF's stream key, with the
        value's seed as the counter block's upper 12 bytes; all blocks of all values go
        through one ECB call.
        """
        n = len(values)
        if n == 0 or length == 0:
            return np.zeros((n, length), dtype=np.uint8)
        seeds = self.seeds(values)
        native = _native()
        if native is not None:
            out = np.empty((n, length), dtype=np.uint8)
            native.ctr_stream(self._aes, seeds, np.full(n, length, dtype=np.int64), out)
            return out
        nblocks = (length + 15) // 16
        blocks = np.repeat(seeds[:, None, :], nblocks, axis=1).copy()
        ctr = np.arange(nblocks, dtype=">u4").view(np.uint8).reshape(nblocks, 4)
        blocks[:, :, 12:16] ^= ctr[None, :, :]
        enc = Cipher(algorithms.AES(self._aes), modes.ECB()).encryptor()
        out = np.frombuffer(enc.update(blocks.tobytes()) + enc.finalize(), dtype=np.uint8)
        return out.reshape(n, nblocks * 16)[:, :length]

    def integers(self, values: Sequence[bytes] | pa.Array, modulus: int) -> np.ndarray:
        """One integer in ``[0, modulus)`` per value (bias below 2**-40 for modulus < 2**24)."""
        s = self.stream(values, 8).copy().view(">u8").reshape(-1).astype(np.uint64)
        return (s % np.uint64(modulus)).astype(np.int64)


def _binary_buffers(values: Sequence[bytes] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 offsets and uint8 data of a list of bytes or an Arrow string/binary array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(values, pa.large_binary())
    elif not pa.types.is_large_binary(values.type):
        values = values.cast(pa.large_binary())
    if values.null_count:
        values = values.fill_null(b"")
    bufs = values.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offs, data


def mac_hex(key: KeyHandle, data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under ``key``, hex: the audit chain's keyed link.

    A primitive rather than an inline ``hmac`` call so that raw key bytes stay inside
    :mod:`biomask.keys` (see :class:`~biomask.keys.handles.KeyHandle`).
    """
    import hmac

    return hmac.new(key._secret(), data, "sha256").hexdigest()
