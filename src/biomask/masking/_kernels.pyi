"""Type stub of the compiled helper (src/biomask/masking/_kernels.c).

Used by :mod:`biomask.keys.primitives` and :mod:`biomask.masking.shape`, which keep numpy
fallbacks with byte-identical output. Buffer arguments are anything with the buffer
protocol (bytes, numpy arrays, Arrow buffers); ``offsets`` and ``lengths`` are int64, and
every ``out`` is a writable buffer of exactly the size the function fills.
"""

from typing import Any

def cbc_mac(key: bytes, offsets: Any, data: Any, out: Any, /) -> None:
    """16-byte AES-256 CBC-MAC seed per value (``len(offsets) - 1`` values) into ``out``."""

def ctr_stream(key: bytes, seeds: Any, lengths: Any, out: Any, /) -> None:
    """AES-256 counter-mode keystreams, ``lengths[i]`` bytes each, back to back in ``out``."""

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
