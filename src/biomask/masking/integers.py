"""Tokens for integer columns: a keyed permutation that keeps the type and the sign.

Numeric keys (``bigint`` primary keys, enrolment numbers read from CSV as ``int64``) are
the join keys of most relational exports. A hex digest in their place changes the column
type and breaks every schema and foreign key downstream, so ``tokenize`` maps an integer
to an integer of the same Arrow type and the same sign.

Why a permutation and not a PRF, as for strings: serial keys fill their range densely
(ids 1 to N), and a random function of a dense set onto itself merges about a third of
the keys with another key, which silently joins different subjects together. FF1 (NIST
SP 800-38G) at radix 2 is a keyed permutation, so distinct integers always get distinct
tokens.

The magnitude ``m`` of a value (``x`` itself, or ``-x - 1`` for a negative ``x``) is
permuted within its band, and the sign is put back:

==========================  =======================================
band of ``m``               permuted as
==========================  =======================================
``[0, 2**31)``              FF1 on 31 bits
``[2**31, 2**32)``          FF1 on 32 bits, cycle-walked into the band
``[2**32, 2**63)``          FF1 on 63 bits, cycle-walked into the band
``[2**63, 2**64)``          FF1 on 64 bits, cycle-walked into the band
==========================  =======================================

Every band lies within each type that can hold its values, so the token of a value fits
the column's type, and ``int32``, ``uint32``, ``int64`` and ``uint64`` columns of one domain
give the same token for the same value (joins across widths survive). Cycle walking
(re-encrypting until the result is back in the band) keeps FF1 a permutation of exactly
the band; decryption walks back the same way. 8- and 16-bit integers hold fewer values
than FF1's minimum domain of 10^6 and are refused by the operator.

The tokens do not keep the number of digits: ``7`` becomes a number below 2**31 that has
as many digits as a random one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    from biomask.masking.ff1 import FF1

__all__ = ["MIN_BITS", "permute_integers"]

#: integer types narrower than this hold fewer than 10^6 values (FF1's minimum domain)
MIN_BITS = 32
#: (lowest magnitude, FF1 numeral bits) of each band
_BANDS = ((0, 31), (2**31, 32), (2**32, 63), (2**63, 64))
_EDGES = np.array([lo for lo, _ in _BANDS[1:]], dtype=np.uint64)
#: cycle-walking rounds; every walking band is at least half valid, so 400 rounds fail
#: with a chance below 2**-400
_MAX_WALK = 400


def _magnitudes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per value: whether it is negative, and ``x`` or ``-x - 1`` as uint64 (no nulls)."""
    if pa.types.is_unsigned_integer(values.type):
        mag = values.cast(pa.uint64()).to_numpy(zero_copy_only=False)
        return np.zeros(len(mag), dtype=bool), mag
    v = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
    neg = v < 0
    return neg, np.where(neg, ~v, v).astype(np.uint64)  # ~x == -x - 1, never overflows


def _assemble(neg: np.ndarray, mag: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """Values of ``dtype`` from signs and permuted magnitudes (each band fits the type)."""
    if pa.types.is_unsigned_integer(dtype):
        return pa.array(mag, pa.uint64()).cast(dtype)
    signed = mag.view(np.int64)
    return pa.array(np.where(neg, ~signed, signed), pa.int64()).cast(dtype)


def permute_integers(
    cipher: FF1, uniq: pa.Array, *, decrypt: bool = False
) -> tuple[pa.Array, np.ndarray]:
    """Tokens (or, with ``decrypt``, originals) for distinct non-null integers.

    ``cipher`` is a radix-2 FF1 whose key belongs to the domain; the tweak only tells
    non-negative from negative values (``i+``, ``i-``), short enough for FF1's fast path.
    Returns the values in ``uniq``'s type, and which values could not be permuted (a
    cycle walk that did not end; in practice none).
    """
    neg, mag = _magnitudes(uniq)
    out = np.zeros(len(mag), dtype=np.uint64)
    bad = np.zeros(len(mag), dtype=bool)
    band = np.searchsorted(_EDGES, mag, side="right")
    crypt = cipher.decrypt_bits if decrypt else cipher.encrypt_bits
    for sign, tweak in ((False, b"i+"), (True, b"i-")):
        for k, (lo, width) in enumerate(_BANDS):
            rows = np.flatnonzero((neg == sign) & (band == k))
            if not len(rows):
                continue
            vals = mag[rows]
            todo = np.ones(len(rows), dtype=bool)
            for _ in range(_MAX_WALK):
                step = crypt(vals[todo], width, tweak)
                vals[todo] = step
                todo[todo] = step < np.uint64(lo)
                if not todo.any():
                    break
            out[rows] = vals
            bad[rows[todo]] = True
    return _assemble(neg, out, uniq.type), bad
