"""Character shapes of string arrays, computed on whole Arrow buffers.

The shaped tokens (:mod:`biomask.masking.permute`), the reversible FF1 tokens
(:mod:`biomask.masking.fpe`) and the token operators keep a value's length, character
classes, case, separators and (optionally) a fixed prefix (``BIO-41937913`` ->
``BIO-73015542``). This module holds what they share, vectorized over all characters of
all distinct values with no per-value Python: the code points of a whole string array
(:func:`codepoints`, :func:`from_codepoints`), their classes (:func:`char_classes`), the
kept prefixes (:func:`prefix_lengths`) and the zero-copy UTF-8 buffers of an array
(:func:`utf8_buffers`).

It also loads masking's compiled helper :mod:`biomask.masking._kernels` (shaped
permutations, FF1 walks, phone and e-mail layouts) for those modules, through
:func:`_native`; each keeps a numpy fallback with byte-identical output
(:func:`native_available`).
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask._native import KERNELS_SWITCH, load

__all__ = [
    "DIGIT",
    "KEEP",
    "LOWER",
    "UPPER",
    "char_classes",
    "codepoints",
    "from_codepoints",
    "native_available",
    "prefix_lengths",
    "utf8_buffers",
]

#: masking's compiled helper (built from masking/_kernels.c and _layout.c)
KERNELS = "biomask.masking._kernels"


def _native() -> ModuleType | None:
    """Masking's compiled helper when it is built and not switched off
    (``BIOMASK_NATIVE_KERNELS=0``, read on every call), else None."""
    return load(KERNELS, KERNELS_SWITCH)


def native_available() -> bool:
    """Whether masking's compiled helper is in use (shaped permutations, FF1 walks, phone
    and e-mail layouts)."""
    return _native() is not None


KEEP, DIGIT, UPPER, LOWER = 0, 1, 2, 3
_SEPARATORS = np.array([ord(c) for c in "-_/:."], dtype=np.uint32)


@lru_cache(maxsize=1)
def _class_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=np.uint8)
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isdigit():
            table[cp] = DIGIT
        elif ch.isalpha():
            table[cp] = UPPER if ch.isupper() else LOWER
    return table


def codepoints(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Code points of a null-free string array, flat, and each value's offset into them.

    Returns
    -------
    cps:
        uint32 code points of all values back to back.
    offsets:
        int64 array of ``len(values) + 1`` offsets into ``cps``.
    """
    arr = values.cast(pa.large_string()) if values.type != pa.large_string() else values
    lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint32), offsets
    bufs = arr.buffers()
    byte_off = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = bufs[2].to_pybytes()[int(byte_off[0]) : int(byte_off[-1])] if bufs[2] else b""
    cps = np.frombuffer(data.decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
    return cps, offsets


def from_codepoints(cps: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Build a string array from flat code points and offsets, without per-value Python."""
    n = len(offsets) - 1
    data = cps.astype(np.uint32).tobytes().decode("utf-32-le").encode("utf-8")
    width = (1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)).astype(
        np.int64
    )
    csum = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(width, out=csum[1:])
    byte_offsets = csum[offsets].astype(np.int64)
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(byte_offsets.tobytes()), pa.py_buffer(data)
    ).cast(pa.string())


def char_classes(cps: np.ndarray) -> np.ndarray:
    """KEEP/DIGIT/UPPER/LOWER per code point; code points past the BMP count as letters."""
    table = _class_table()
    out = np.full(len(cps), LOWER, dtype=np.uint8)
    bmp = cps < 0x10000
    out[bmp] = table[cps[bmp]]
    return out


def prefix_lengths(cps: np.ndarray, offsets: np.ndarray, prefix: str | None) -> np.ndarray:
    """How many leading code points of each value are a fixed prefix to keep.

    ``"auto"`` keeps 1-6 upper-case ASCII letters followed by a separator (``SUBJ-``,
    ``BIO-``, ``DV/``); a literal string keeps exactly that prefix where a value starts
    with it; ``None`` keeps nothing.
    """
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.int64)
    if prefix is None or n == 0 or len(cps) == 0:
        return out
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if prefix != "auto":
        p = np.array([ord(c) for c in prefix], dtype=np.uint32)
        ok = lengths >= len(p)
        for i, c in enumerate(p):  # loop over prefix characters, not values
            idx = np.minimum(starts + i, len(cps) - 1)
            ok &= cps[idx] == c
        out[ok] = len(p)
        return out
    run = np.zeros(n, dtype=np.int64)
    alive = lengths > 0
    for i in range(7):  # at most 6 letters, then a separator
        idx = np.minimum(starts + i, len(cps) - 1)
        ch = cps[idx]
        in_range = alive & (lengths > i)
        is_upper = (ch >= 65) & (ch <= 90)
        is_sep = np.isin(ch, _SEPARATORS)
        hit = in_range & is_sep & (run == i) & (i > 0)
        out[hit & (lengths > i + 1)] = i + 1
        alive &= in_range & is_upper & (run == i)
        run[alive] += 1
    return out


def utf8_buffers(values: pa.Array) -> tuple[pa.Array, np.ndarray, pa.Buffer | bytes]:
    """The values as a string array, its int64 offsets and its data buffer, without a copy.

    Binary input is cast to string first, which validates it as UTF-8 exactly as
    :func:`codepoints` does on the fallback path.
    """
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.large_string())
    bufs = values.buffers()
    wide = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offs = np.frombuffer(bufs[1], dtype=wide)[values.offset : values.offset + len(values) + 1]
    data = bufs[2] if bufs[2] is not None else b""
    return values, np.ascontiguousarray(offs, dtype=np.int64), data
