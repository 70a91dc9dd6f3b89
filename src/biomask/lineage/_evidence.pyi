"""Type stub of lineage's compiled helper (src/biomask/lineage/_evidence.c).

Loaded by :mod:`biomask.lineage.evidence` (through :mod:`biomask._native`), which keeps an
Arrow/NumPy path with the same digests. ``offsets`` are int64; every ``out`` is a writable
buffer of exactly the size the function fills.
"""

from typing import Any

def ev_hash(offsets: Any, data: Any, key: bytes, out: Any, /) -> None:
    """Keyed 64-bit digest of every value's bytes into ``out`` (uint64; ``key``: 16 bytes)."""

def ev_scan(
    offsets: Any,
    data: Any,
    key: bytes,
    candidates: bool,
    status: Any,
    whole: Any,
    cand: Any,
    /,
) -> tuple[int, int, int, int]:
    """Residual-PII scan digests of the values whose normal form is their ASCII lower case.

    ``status`` (one byte per value) gets 0 for those, 1 for other values without irregular
    whitespace, 2 for values to split and join. ``whole`` gets the digests of the status-0
    values of at least 3 bytes, ``cand`` (when ``candidates``) those of their words, tokens
    and n-grams. Returns how many of each were written, 1 when a status 0 or 1 value holds
    a space (else 0), and how many values are not status 0.
    """

def ev_bits(keys: Any, shift: int, table: Any, /) -> None:
    """Sets bit ``(key >> shift) % (8 * len(table))`` of ``table`` for every uint64 key
    (``table``: a power of two bytes)."""

def ev_filter(table: Any, shift: int, probes: Any, out: Any, /) -> int:
    """The uint64 probes whose bit in ``table`` is set, in order, into ``out`` (uint64, room
    for every probe); returns how many."""

def ev_distinct(offsets: Any, data: Any, key: bytes, first: Any, min_len: int = 0, /) -> int:
    """Indices (int64, in order) of the first occurrence of every distinct value of at least
    ``min_len`` bytes into ``first`` (room for one per value); returns how many."""
