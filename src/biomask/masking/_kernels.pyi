"""Type stub of masking's compiled helper (src/biomask/masking/_kernels.c, _layout.c).

Loaded by :func:`biomask.masking.shape._native` (through :mod:`biomask._native`) for
:mod:`biomask.masking.permute`, ``ff1`` and the token operators, which keep numpy
fallbacks with byte-identical output. Buffer arguments are anything with the buffer
protocol (bytes, numpy arrays, Arrow buffers); ``offsets`` and ``lengths`` are int64, and
every ``out`` is a writable buffer of exactly the size the function fills.
"""

from typing import Any

def phone_scan(offsets: Any, data: Any, keep: Any, ndig: Any, /) -> None:
    """Per phone number: leading digits kept (country code or trunk 0), and digit count."""

def phone_positions(offsets: Any, data: Any, keep: Any, at: Any, /) -> None:
    """Byte positions of the digits that change; ``at`` holds exactly that many int64."""

def phone_take(offsets: Any, data: Any, keep: Any, digits: Any, /) -> None:
    """The digits that change, back to back; ``digits`` holds exactly that many bytes."""

def phone_put(offsets: Any, data: Any, keep: Any, digits: Any, out: Any, /) -> None:
    """``out`` (as long as ``data``): ``data`` with the digits that change replaced by
    ``digits``, in order."""

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
    auto_prefix: bool = False,
    /,
) -> None:
    """Classes, tweak descriptors, mixed-radix numbers and flags of shaped values; the
    chunks of long values, back to back. With ``auto_prefix``, ``keep[i]`` is first set to
    the value's ``"auto"`` prefix (1-6 upper-case ASCII letters and a separator), as
    :func:`biomask.masking.shape.prefix_lengths` finds it."""

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

def distinct(offsets: Any, data: Any, key: bytes, valid: Any, first: Any, index: Any, /) -> int:
    """Arrow's dictionary_encode of a string column: the row of each distinct value's first
    occurrence (``first``, int64), each row's value number (``index``, int32; -1 where
    ``valid``, one byte per row or empty for none null, says it is null); returns how many
    distinct values there are."""

def _aes_impl(name: str = ..., /) -> str:
    """The AES-256 implementation this module uses, ``"vaes"`` or ``"evp"`` (OpenSSL),
    after switching to ``name`` when given; for the tests that compare the two."""
