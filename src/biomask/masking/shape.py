"""Format-shaped tokens computed on whole string arrays.

A shaped token replaces every letter with a letter of the same case and every digit with a
digit, and keeps punctuation, spaces and (optionally) a fixed prefix, so the token has the
same length, character classes, case and separators as the value (``BIO-41937913`` ->
``BIO-73015542``). The work is vectorized over all characters of all distinct values: the
code points of the whole Arrow data buffer are decoded in one call, classified with one
table lookup and replaced with one keystream, and the result is assembled directly into
Arrow buffers. There is no per-value Python: even the keyed PRF that seeds each value's
stream runs as a few AES calls over the whole batch.

Where masking's compiled helper :mod:`biomask.masking._kernels` is built, :func:`shape_tokens`
skips the code point arrays altogether: it decodes the UTF-8 buffer, finds the prefix,
classifies and replaces each character and writes the output buffers in one pass in C,
after the seeds and keystream (the keys package's helper). That is about ten times faster,
and the numpy path below stays as the fallback with byte-identical output
(:func:`native_available`). The same helper serves :mod:`biomask.masking.permute`,
:mod:`biomask.masking.ff1` and the token operators, through :func:`_native`.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask._native import KERNELS_SWITCH, load
from biomask.keys.primitives import DeterministicPrf, ragged_stream

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
    "shape_tokens",
    "utf8_buffers",
]

#: masking's compiled helper (built from masking/_kernels.c and _layout.c)
KERNELS = "biomask.masking._kernels"


def _native() -> ModuleType | None:
    """Masking's compiled helper when it is built and not switched off
    (``BIOMASK_NATIVE_KERNELS=0``, read on every call), else None."""
    return load(KERNELS, KERNELS_SWITCH)


def native_available() -> bool:
    """Whether masking's compiled helper is in use (shaped tokens and permutations, FF1
    walks, phone and e-mail layouts)."""
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


def shape_tokens(
    prf: DeterministicPrf,
    values: pa.Array,
    *,
    prf_input: list[bytes] | pa.Array | None = None,
    prefix: str | None = "auto",
    keep_lengths: np.ndarray | None = None,
    upto: np.ndarray | None = None,
) -> pa.Array:
    """Shaped tokens for a null-free array of (distinct) strings.

    Parameters
    ----------
    prf:
        The domain's keyed PRF; the same value under the same domain key always gives the
        same token.
    values:
        Strings to tokenize (callers pass each distinct value once).
    prf_input:
        What the PRF is keyed on per value, when it is not the value itself (e.g. a
        normalized phone number, so that formats of one number agree).
    prefix:
        See :func:`prefix_lengths`.
    keep_lengths:
        Per-value number of leading characters to keep, overriding ``prefix`` (the phone
        operator keeps the country code this way).
    upto:
        Per-value number of leading characters to shape; the rest is kept as it is (the
        e-mail operator shapes the local part and keeps ``@domain``). A value's token then
        equals the token of its first ``upto`` characters followed by the rest, because
        the keystream of a value does not depend on how long it is.
    """
    native = _native()
    if native is not None:
        return _shape_native(native, prf, values, prf_input, prefix, keep_lengths, upto)
    cps, offsets = codepoints(values)
    if len(cps) == 0:
        return values.cast(pa.string())
    lengths = np.diff(offsets)
    shaped = lengths if upto is None else np.minimum(lengths, np.maximum(upto, 0))
    if prf_input is None:
        prf_input = values
    rnd_short = ragged_stream(prf, prf_input, shaped * 2).view(np.uint16)
    cls = char_classes(cps)
    keep = prefix_lengths(cps, offsets, prefix) if keep_lengths is None else keep_lengths
    pos = np.arange(len(cps)) - np.repeat(offsets[:-1], lengths)
    cls[pos < np.repeat(keep, lengths)] = KEEP
    if upto is None:
        rnd = rnd_short
    else:  # characters past upto keep their class KEEP and draw no keystream
        tail = pos >= np.repeat(shaped, lengths)
        cls[tail] = KEEP
        rnd = np.zeros(len(cps), dtype=np.uint16)
        rnd[~tail] = rnd_short
    out = cps.copy()
    m = cls == DIGIT
    out[m] = 48 + rnd[m] % 10
    m = cls == UPPER
    out[m] = 65 + rnd[m] % 26
    m = cls == LOWER
    out[m] = 97 + rnd[m] % 26
    return from_codepoints(out, offsets)


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


def _shape_native(
    native: ModuleType,
    prf: DeterministicPrf,
    values: pa.Array,
    prf_input: list[bytes] | pa.Array | None,
    prefix: str | None,
    keep_lengths: np.ndarray | None,
    upto: np.ndarray | None = None,
) -> pa.Array:
    """:func:`shape_tokens` through the compiled kernels: same arguments, same bytes.

    The keystream is 2 bytes per code point (read as native-order uint16, as the fallback's
    ``.view(np.uint16)`` does), so the code points per value are counted first; the
    prefix (``"auto"`` or literal) is found in C while shaping, and a literal prefix is
    compared as UTF-8 bytes, which matches code point by code point because UTF-8 is
    prefix-free.
    """
    if values.null_count:  # the numpy path cannot take them either (no code points)
        raise ValueError("shape_tokens takes a null-free array")
    if len(values) == 0:
        return values.cast(pa.string())
    values, offs, data = utf8_buffers(values)
    n = len(values)
    span = int(offs[-1] - offs[0])
    if span == 0:  # no characters at all: nothing to replace
        return values.cast(pa.string())
    counts = np.empty(n, dtype=np.int64)
    native.utf8_lengths(offs, data, counts)
    cut = None
    if upto is not None:
        cut = np.ascontiguousarray(np.minimum(counts, np.maximum(upto, 0)), dtype=np.int64)
        counts = cut
    rnd = ragged_stream(prf, values if prf_input is None else prf_input, counts * 2)
    keep = None
    mode, lit = 0, b""
    if keep_lengths is not None:
        keep = np.ascontiguousarray(keep_lengths, dtype=np.int64)
    elif prefix == "auto":
        mode = 1
    elif prefix is not None:
        mode, lit = 2, prefix.encode("utf-8", "surrogatepass")
    out = np.empty(span, dtype=np.uint8)
    wide = span > np.iinfo(np.int32).max
    out_offs = np.empty(n + 1, dtype=np.int64 if wide else np.int32)
    used = native.shape(offs, data, rnd, _class_table(), keep, mode, lit, out, out_offs, wide, cut)
    kind = pa.LargeStringArray if wide else pa.StringArray
    res = kind.from_buffers(n, pa.py_buffer(out_offs), pa.py_buffer(out[:used]))
    return res.cast(pa.string()) if wide else res
