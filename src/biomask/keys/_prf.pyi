"""Type stub of the keys package's compiled PRF (src/biomask/keys/_prf.c).

Loaded by :mod:`biomask.keys.primitives` (through :mod:`biomask._native`), which keeps a
numpy fallback with byte-identical output. Buffer arguments are anything with the buffer
protocol; ``offsets`` and ``lengths`` are int64, and every ``out`` is a writable buffer of
exactly the size the function fills.
"""

from typing import Any

def cbc_mac(key: bytes, offsets: Any, data: Any, out: Any, /) -> None:
    """16-byte AES-256 CBC-MAC seed per value (``len(offsets) - 1`` values) into ``out``."""

def ctr_stream(key: bytes, seeds: Any, lengths: Any, out: Any, /) -> None:
    """AES-256 counter-mode keystreams, ``lengths[i]`` bytes each, back to back in ``out``."""

def _ecb(key: bytes, data: Any, out: Any, /) -> None:
    """AES-256-ECB of whole 16-byte blocks into ``out``, on the implementation in use."""

def _aes_impl(name: str = ..., /) -> str:
    """The AES-256 implementation this module uses, ``"vaes"`` or ``"evp"`` (OpenSSL),
    after switching to ``name`` when given; for the tests that compare the two."""
