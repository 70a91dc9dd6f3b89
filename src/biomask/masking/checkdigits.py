"""Check digits that tokens keep valid: ICAO 9303 (7-3-1) and Luhn.

A token that replaces a document or card number must still pass the check its consumers
run (an MRZ parser, a payment form), so tokenizing with ``format: icao_document`` or
``format: luhn`` recomputes the last character from the tokenized body. All functions
work on a 2-D uint8 array of ASCII codes, one value per row, so a column costs a few numpy
operations.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "icao_check_digit",
    "icao_digits",
    "icao_valid",
    "luhn_check_digit",
    "luhn_digits",
    "luhn_valid",
]

_ICAO_VALUE = np.full(256, -1, dtype=np.int64)
_ICAO_VALUE[ord("0") : ord("9") + 1] = np.arange(10)
_ICAO_VALUE[ord("A") : ord("Z") + 1] = np.arange(10, 36)
_ICAO_VALUE[ord("a") : ord("z") + 1] = np.arange(10, 36)
_ICAO_VALUE[ord("<")] = 0


def icao_digits(body: np.ndarray) -> np.ndarray:
    """ICAO 9303 check digit (as an ASCII code) of each row of ASCII codes.

    Characters outside ``0-9 A-Z <`` give -1 (no valid check digit).
    """
    vals = _ICAO_VALUE[body.astype(np.int64)]
    weights = np.resize(np.array([7, 3, 1], dtype=np.int64), body.shape[1])
    digit = (vals * weights).sum(axis=1) % 10 + ord("0")
    out: np.ndarray = np.where((vals < 0).any(axis=1), -1, digit)
    return out


def icao_check_digit(s: str) -> str:
    """ICAO 9303 check digit of one field, e.g. ``L898902C3`` -> ``6``."""
    d = int(icao_digits(np.frombuffer(s.encode("ascii"), dtype=np.uint8)[None, :])[0])
    if d < 0:
        raise ValueError("ICAO fields hold only 0-9, A-Z and <")
    return chr(d)


def icao_valid(values: np.ndarray) -> np.ndarray:
    """Whether each row's last character is the ICAO check digit of the rest."""
    ok: np.ndarray = icao_digits(values[:, :-1]) == values[:, -1].astype(np.int64)
    return ok


def luhn_digits(body: np.ndarray) -> np.ndarray:
    """Luhn check digit (ASCII code) to append to each row of ASCII digit codes."""
    d = body.astype(np.int64) - ord("0")
    bad = ((d < 0) | (d > 9)).any(axis=1)
    # from the right of the body, every first digit is doubled (the check digit is next)
    n = body.shape[1]
    double = (np.arange(n)[::-1] % 2) == 0
    dd = np.where(double, d * 2, d)
    dd = np.where(dd > 9, dd - 9, dd)
    check = (10 - dd.sum(axis=1) % 10) % 10 + ord("0")
    out: np.ndarray = np.where(bad, -1, check)
    return out


def luhn_check_digit(s: str) -> str:
    """Luhn check digit for a digit string, e.g. ``7992739871`` -> ``3``."""
    d = int(luhn_digits(np.frombuffer(s.encode("ascii"), dtype=np.uint8)[None, :])[0])
    if d < 0:
        raise ValueError("Luhn numbers hold only digits")
    return chr(d)


def luhn_valid(values: np.ndarray) -> np.ndarray:
    """Whether each row ends in its Luhn check digit."""
    ok: np.ndarray = luhn_digits(values[:, :-1]) == values[:, -1].astype(np.int64)
    return ok
