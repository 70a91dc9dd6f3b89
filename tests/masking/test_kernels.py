"""Shaped tokens from the compiled kernel equal the numpy ones, byte for byte.

:func:`shape_tokens` decodes UTF-8, finds prefixes and replaces characters in C when
``biomask.masking._kernels`` is built. A token that differed between the two paths would
break consistency across machines, so every case here runs on both and compares bytes:
arbitrary Unicode (non-BMP included), empty strings, long values, every prefix mode, kept
lengths, sliced and large arrays.
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
from biomask.keys import DeterministicPrf, Keyring
from biomask.masking.shape import _class_table, shape_tokens
from tests.native import kernels_path

PRF = DeterministicPrf(Keyring.ephemeral().derive("tokenize", "kernels"))
BUILT = _native._import("biomask.masking._kernels") is not None
pytestmark = pytest.mark.skipif(not BUILT, reason="biomask.masking._kernels was not built")


def _path(native: bool) -> AbstractContextManager[None]:
    return kernels_path(native)


def _agree(values: pa.Array, **kw: Any) -> list[str | None]:
    """Tokens on both paths; asserts equal types, offsets-independent bytes and values."""
    with _path(True):
        a = shape_tokens(PRF, values, **kw)
    with _path(False):
        b = shape_tokens(PRF, values, **kw)
    assert a.type == b.type == pa.string()
    assert a.to_pylist() == b.to_pylist()
    out: list[str | None] = a.to_pylist()
    return out


ID_CHARS = string.ascii_letters + string.digits + "-_/:. @"
ids = st.text(alphabet=ID_CHARS, max_size=20) | st.from_regex(
    r"[A-Z]{1,8}[-_/:.][A-Z0-9]{0,10}", fullmatch=True
)
texts = st.text(max_size=20) | st.text(min_size=60, max_size=120) | ids
prefixes = st.sampled_from([None, "auto", "SUBJ-", "É", "𝔘x", ""]) | st.text(max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(texts, max_size=30),
    prefix=prefixes,
    start=st.integers(0, 2),
    large=st.booleans(),
)
def test_arbitrary_unicode_agrees(
    values: list[str], prefix: str | None, start: int, large: bool
) -> None:
    arr = pa.array(["pad"] * start + values, pa.large_string() if large else pa.string())
    _agree(arr.slice(start), prefix=prefix)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(ids, max_size=40), prefix=prefixes, start=st.integers(0, 2))
def test_ascii_ids_agree(values: list[str], prefix: str | None, start: int) -> None:
    """All-ASCII input takes the kernel's flat, vectorized path."""
    arr = pa.array(["pad"] * start + values, pa.string()).slice(start)
    _agree(arr, prefix=prefix)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(texts, st.integers(-2, 25)), max_size=30),
    ascii_only=st.booleans(),
)
def test_keep_lengths_agree(rows: list[tuple[str, int]], ascii_only: bool) -> None:
    values = [v.encode("ascii", "ignore").decode() if ascii_only else v for v, _ in rows]
    keep = np.array([k for _, k in rows], dtype=np.int64)
    _agree(pa.array(values, pa.string()), keep_lengths=keep)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(texts, min_size=1, max_size=20), as_arrow=st.booleans())
def test_prf_input_agrees(values: list[str], as_arrow: bool) -> None:
    keys: Any = [v.lower().encode() for v in values]
    if as_arrow:
        keys = pa.array(keys, pa.binary())
    _agree(pa.array(values), prf_input=keys, prefix=None)


def test_edge_cases_agree() -> None:
    _agree(pa.array([], pa.string()))
    _agree(pa.array(["", ""]))
    _agree(pa.array(["", "", "a"]).slice(0, 2))
    _agree(pa.array(["𝔘𝔫𝔦", "😀1", "ǅz", "²³", "١٢٣", "Ⅻ"]))
    _agree(pa.array(["AB-", "AB-1", "ABCDEF-1", "ABCDEFG-1", "A1-2", "-AB"]), prefix="auto")
    _agree(pa.array([b"XY1234", b"xy"], pa.binary()), prefix="XY")
    _agree(pa.array(["SUBJ-00012345" * 40]), prefix="auto")


def test_nulls_are_refused() -> None:
    with _path(True), pytest.raises(ValueError, match="null-free"):
        shape_tokens(PRF, pa.array(["a", None]))


def test_many_values_agree() -> None:
    """Enough values and bytes to cross the kernel's internal groups several times."""
    rng = np.random.default_rng(3)
    alnum = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    pp = ["".join(r) for r in alnum[rng.integers(0, 36, size=(5000, 9))]]
    subj = [f"SUBJ-{i:08d}" for i in rng.integers(0, 10**8, 5000)]
    out = _agree(pa.array(pp + subj))
    assert all(t is not None and t.startswith("SUBJ-") for t in out[5000:])
    _agree(pa.array([*pp, "Zoë-4"]))  # one non-ASCII value: the general path for all


# -- the kernel itself --------------------------------------------------------------------


def _raw(values: list[str], table: np.ndarray, mode: int = 1) -> tuple[bytes, bytes]:
    from biomask.masking import _kernels

    data = "".join(values).encode()
    offs = np.zeros(len(values) + 1, np.int64)
    np.cumsum([len(v.encode()) for v in values], out=offs[1:])
    stream = np.random.default_rng(0).bytes(2 * sum(len(v) for v in values))
    out, out_offs = np.empty(len(data), np.uint8), np.empty(len(values) + 1, np.int32)
    used = _kernels.shape(offs, data, stream, table, None, mode, b"", out, out_offs, False)
    return out[:used].tobytes(), out_offs.tobytes()


def test_flat_ascii_path_equals_the_general_path() -> None:
    """An ASCII table entry no value uses (DEL) moves the kernel off its fast path."""
    values = ["SUBJ-00012345", "8KKN42RO2", "AB-1", "", "x.y/z", "ABCDEFG-12"] * 50
    table = _class_table()
    other = table.copy()
    other[0x7F] = 1
    assert _raw(values, table) == _raw(values, other)
    assert _raw(values, table, 0) == _raw(values, other, 0)


def test_kernel_refuses_bad_input() -> None:
    from biomask.masking import _kernels

    table = _class_table()
    out, offs32 = np.empty(8, np.uint8), np.empty(2, np.int32)
    ok = np.array([0, 2], np.int64)
    with pytest.raises(ValueError, match="UTF-8"):  # a lead byte whose tail is missing
        _kernels.shape(ok, b"a\xc3", bytes(4), table, None, 0, b"", out, offs32, False)
    with pytest.raises(ValueError, match="UTF-8"):  # a stray continuation byte
        _kernels.shape(ok, b"\x80a", bytes(4), table, None, 0, b"", out, offs32, False)
    with pytest.raises(ValueError, match="stream"):  # keystream too short
        _kernels.shape(ok, b"ab", bytes(3), table, None, 0, b"", out, offs32, False)
    with pytest.raises(ValueError, match="stream"):  # keystream too long
        _kernels.shape(ok, b"ab", bytes(6), table, None, 0, b"", out, offs32, False)
    with pytest.raises(ValueError, match="offsets"):
        _kernels.shape(np.array([0, 3], np.int64), b"ab", bytes(6), table, None, 0, b"",
                       out, offs32, False)  # fmt: skip
    with pytest.raises(ValueError, match="table"):
        _kernels.shape(ok, b"ab", bytes(4), table[:100], None, 0, b"", out, offs32, False)
    with pytest.raises(ValueError, match="keep"):
        _kernels.shape(ok, b"ab", bytes(4), table, np.zeros(3, np.int64), 0, b"", out,
                       offs32, False)  # fmt: skip
    with pytest.raises(ValueError, match="out_offsets"):
        _kernels.shape(ok, b"ab", bytes(4), table, None, 0, b"", out, np.empty(2, np.int64),
                       False)  # fmt: skip
    with pytest.raises(ValueError, match="out_data"):
        _kernels.shape(ok, b"ab", bytes(4), table, None, 0, b"", out[:1], offs32, False)
    with pytest.raises(ValueError, match="mode"):
        _kernels.shape(ok, b"ab", bytes(4), table, None, 7, b"", out, offs32, False)


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


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(max_size=20), min_size=1, max_size=8),
    st.lists(st.integers(-1, 25), min_size=8, max_size=8),
)
def test_shape_upto_native_equals_numpy_and_keeps_the_rest(
    values: list[str], cut: list[int]
) -> None:
    arr = pa.array(values, pa.string())
    upto = np.array(cut[: len(values)], dtype=np.int64)
    with _path(True):
        native = shape_tokens(PRF, arr, prefix=None, upto=upto)
    with _path(False):
        fallback = shape_tokens(PRF, arr, prefix=None, upto=upto)
    assert native.equals(fallback)
    whole = shape_tokens(PRF, arr, prefix=None)
    for v, k, tok, full in zip(values, upto, native.to_pylist(), whole.to_pylist(), strict=True):
        k = max(0, min(int(k), len(v)))
        # the shaped part is the whole value's token cut short: keystreams are prefixes
        assert tok == full[:k] + v[k:]
