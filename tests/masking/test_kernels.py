"""Masking's compiled kernels equal their numpy/Arrow fallbacks, byte for byte.

A result that differed between the two paths would break consistency across machines, so
every case here runs on both and compares: the ``"auto"`` prefix the shaped permutation's
scan finds, the phone-number layout and the e-mail layout. (The FF1 walk and the rest of
the shaped permutation are compared in test_permute.py.)
"""

from __future__ import annotations

import string
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask import _native
from biomask.keys import Keyring
from biomask.masking.permute import ShapePermutation
from tests.native import kernels_path

PERM = ShapePermutation(Keyring.ephemeral().derive_token("tokenize", "kernels"), "tokenize")
BUILT = _native._import("biomask.masking._kernels") is not None
pytestmark = pytest.mark.skipif(not BUILT, reason="biomask.masking._kernels was not built")


def _path(native: bool) -> AbstractContextManager[None]:
    return kernels_path(native)


# -- the "auto" prefix of shaped permutations -----------------------------------------------
ID_CHARS = string.ascii_letters + string.digits + "-_/:. @"
ids = st.text(alphabet=ID_CHARS, max_size=20) | st.from_regex(
    r"[A-Z]{1,8}[-_/:.][A-Z0-9]{0,10}", fullmatch=True
)


def _auto(values: pa.Array, native: bool) -> tuple[list[bool], list[bool], list[str | None]]:
    """Which values are too small or failed, and the tokens of the others, on one path."""
    with _path(native):
        res = PERM.permute(values, keep="auto")
    made = pa.array(~(res.small | res.failed))
    return res.small.tolist(), res.failed.tolist(), res.values.filter(made).to_pylist()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(ids, max_size=40, unique=True), start=st.integers(0, 2))
def test_auto_prefix_native_equals_numpy(values: list[str], start: int) -> None:
    """The kernel finds the ``"auto"`` prefix in C (``shape_scan``), the fallback with
    :func:`biomask.masking.shape.prefix_lengths`: a different prefix would change which
    shapes are too small and the tokens of the rest."""
    arr = pa.array(["pad"] * start + values, pa.string()).slice(start)
    assert _auto(arr, True) == _auto(arr, False)


def test_auto_prefix_edge_cases_native_equal_numpy() -> None:
    values = [
        "AB-", "AB-1", "A1-2", "-AB", "AB-1234567", "ABCDEF-1234567", "ABCDEFG-1234567",
        "ABC-12345", "ABC:123456", "DV/0000000", "X.Y1234567", "SUBJ-00012345" * 40, "",
    ]  # fmt: skip
    arr = pa.array(values, pa.string())
    assert _auto(arr, True) == _auto(arr, False)
    small, _, _ = _auto(arr, True)
    assert small[values.index("ABC-12345")]  # ``ABC-`` kept: five digits are too few
    assert not small[values.index("ABCDEFG-1234567")]  # seven letters are no prefix


# -- phone numbers ---------------------------------------------------------------------
_PHONE_PIECES = st.sampled_from(
    [*"0123456789+ \t-()./é", "00", "+44", "+1", "+7", "+49", "\u00a0", "٣", "\U0001f4de"]
)


def _phone_layout(values: pa.Array, native: bool) -> tuple[Any, ...]:
    from biomask.masking.operators.tokens import phone_digits

    with _path(native):
        lay = phone_digits(values)
    return lay.at.tolist(), lay.per_value.tolist(), lay.bad.tolist(), lay.national().to_pylist()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_PHONE_PIECES, max_size=14).map("".join), min_size=1, max_size=8))
def test_phone_layout_native_equals_numpy(values: list[str]) -> None:
    arr = pa.array(values, pa.string())
    for a in (arr, arr.slice(1), arr.cast(pa.large_string())):
        assert _phone_layout(a, True) == _phone_layout(a, False)


def test_phone_kernels_refuse_bad_offsets() -> None:
    from biomask.masking import _kernels

    data = np.frombuffer(b"+44 20 7946 0958", dtype=np.uint8)
    keep, ndig = np.empty(1, np.int64), np.empty(1, np.int64)
    with pytest.raises(ValueError, match="outside the data buffer"):
        _kernels.phone_scan(np.array([0, 99], np.int64), data, keep, ndig)
    _kernels.phone_scan(np.array([0, len(data)], np.int64), data, keep, ndig)
    assert (keep[0], ndig[0]) == (2, 12)
    with pytest.raises(ValueError, match="exactly the changing digits"):
        _kernels.phone_positions(
            np.array([0, len(data)], np.int64), data, keep, np.empty(3, np.int64)
        )


# -- e-mail addresses ------------------------------------------------------------------
_MAIL_PIECES = st.sampled_from(
    [*"ab.@ \t\n\r\f\v-_é1Z", "\u00a0", "\u3000", "\U0001f600", "..", "@@", "x.org"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_MAIL_PIECES, max_size=12).map("".join), min_size=1, max_size=8))
def test_email_layout_native_equals_arrow_regex(values: list[str]) -> None:
    from biomask.masking.operators.tokens import _email_layout

    arr = pa.array(values, pa.string())
    for a in (arr, arr.slice(1), arr.cast(pa.large_string())):
        with _path(True):
            ok_n, local_n = _email_layout(a)
        with _path(False):
            ok_p, local_p = _email_layout(a)
        assert ok_n.tolist() == ok_p.tolist()
        # the local length only matters for accepted addresses
        assert local_n[ok_n].tolist() == local_p[ok_p].tolist()
