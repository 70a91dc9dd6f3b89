"""Type stub of masking's compiled helper (src/biomask/masking/_kernels.c, _layout.c).

Loaded by :func:`biomask.masking.shape._native` (through :mod:`biomask._native`) for
:mod:`biomask.masking.shape`, ``permute``, ``ff1`` and the token operators, which keep
numpy fallbacks with byte-identical output. Buffer arguments are anything with the buffer
protocol (bytes, numpy arrays, Arrow buffers); ``offsets`` and ``lengths`` are int64, and
every ``out`` is a writable buffer of exactly the size the function fills.
"""

from typing import Any

def utf8_lengths(offsets: Any, data: Any, out: Any, /) -> None:
    """Code points per UTF-8 value into ``out`` (int64)."""

def shape(
    offsets: Any,
    data: Any,
    stream: Any,
    table: Any,
    keep: Any | None,
    mode: int,
    prefix: bytes,
    out_data: Any,
    out_offsets: Any,
    wide: bool,
    upto: Any | None = None,
    /,
) -> int:
    """Shaped tokens of UTF-8 values; returns the bytes written to ``out_data``.

    ``mode`` 0 keeps ``keep[i]`` leading code points (none when ``keep`` is None), 1 the
    ``"auto"`` prefix, 2 the literal UTF-8 ``prefix``; ``out_offsets`` is int64 when
    ``wide``, else int32. With ``upto``, only the first ``upto[i]`` code points of a value
    are shaped (and draw keystream); the rest is copied.
    """

def phone_scan(offsets: Any, data: Any, keep: Any, ndig: Any, /) -> None:
    """Per phone number: leading digits kept (country code or trunk 0), and digit count."""

def phone_positions(offsets: Any, data: Any, keep: Any, at: Any, /) -> None:
    """Byte positions of the digits that change; ``at`` holds exactly that many int64."""

def email_scan(offsets: Any, data: Any, ok: Any, local: Any, /) -> None:
    """Per value: whether it is an address the email operator takes (``ok``, one byte) and
    the code points of its local part (``local``, int64)."""

def ff1_walk(
    key: bytes,
    x: Any,
    nbits: Any,
    tweaks: Any,
    limit: Any,
    decrypt: bool,
    bad: Any,
    max_walk: int = 400,
    /,
) -> None:
    """FF1 (radix 2, AES-256) on ``x[i]`` (``nbits[i]`` bits, 16-byte tweak ``tweaks[i]``),
    re-encrypted until below ``limit[i]``; in place. Values still outside after the walk
    limit get ``bad[i] = 1``. ``nbits[i] == 0`` means bitlen(limit - 1), at least 20, and
    is filled in."""

def shape_scan(
    offsets: Any,
    data: Any,
    keep: Any,
    upto: Any,
    hide_tail: bool,
    maxa: Any,
    desc: Any,
    x: Any,
    space: Any,
    flags: Any,
    chunk_x: Any,
    chunk_space: Any,
    nchunks: Any,
    /,
) -> None:
    """Classes, tweak descriptors, mixed-radix numbers and flags of shaped values; the
    chunks of long values, back to back."""

def shape_place(
    offsets: Any,
    data: Any,
    keep: Any,
    upto: Any,
    x: Any,
    flags: Any,
    chunk_x: Any,
    nchunks: Any,
    out: Any,
    /,
) -> None:
    """Write permuted numbers back as characters of the same classes into ``out``."""
