"""Masking's compiled kernels equal their numpy/Arrow fallbacks, byte for byte.

A result that differed between the two paths would break consistency across machines, so
every case here runs on both and compares: the ``"auto"`` prefix the shaped permutation's
scan finds, what that scan writes (descriptors, numbers, spaces, flags, chunks), the
tokens it places back, the phone-number layout and the e-mail layout. The values cover
what the kernels tell apart: ASCII digits and letters, separators, white space, UTF-8
beyond ASCII, empty values, and values long enough to span several 16-byte blocks, to
be cut into chunks, or to take the kernels' byte loops (over 64 bytes). (The FF1 walk is
compared with numpy in test_permute.py; here its two AES-256 implementations, VAES and
OpenSSL's, are compared with each other.)
"""

from __future__ import annotations

import random
import string
from contextlib import AbstractContextManager
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask import _native
from biomask.keys import Keyring
from biomask.masking.permute import (
    _LONG,
    _MAXA,
    ShapePermutation,
    _bounds,
    _horner,
    _layout,
)
from biomask.masking.shape import prefix_lengths, utf8_buffers
from tests.native import aes_impls, aes_path, kernels_path

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


# -- what the shaped permutation's scan writes, and the tokens it places back -------------
_SHAPE_PIECES = st.sampled_from(
    [*"0179AMZamz-./@ \t", "é¿", "\u00a0", "٣", "\U0001f600", "SUBJ-", "1234567", "abcdefgh",
     "QWERTYUIOP", "ab.cd", "8KKN42RO2", "x@ex.org"]
)  # fmt: skip
shaped = st.lists(_SHAPE_PIECES, max_size=12).map("".join)


def _scan(
    values: list[str], keep: list[int] | None, upto: list[int], hide: bool
) -> dict[str, list[Any]]:
    """The compiled scan's outputs next to the numpy layout's, as permute.py makes them
    (``keep=None``: the ``"auto"`` prefix)."""
    from biomask.masking import _kernels

    arr = pa.array(values, pa.string())
    _, offs, buf = utf8_buffers(arr)
    offsets = np.ascontiguousarray(offs - offs[0])
    data = np.frombuffer(buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])]
    n, cap = len(values), len(data) // 13 + len(values) + 1
    keep_a = np.zeros(n, np.int64) if keep is None else np.array(keep, np.int64)
    upto_a = np.array(upto, np.int64)
    desc, flags = np.empty(len(data), np.uint8), np.empty(n, np.uint8)
    x, space, nchunks = np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.int64)
    cx, cs = np.empty(cap, np.uint64), np.empty(cap, np.uint64)
    _kernels.shape_scan(
        offsets, data, keep_a, upto_a, hide, _MAXA, desc, x, space, flags, cx, cs, nchunks,
        keep is None,
    )  # fmt: skip
    if keep is None:
        want = prefix_lengths(data.astype(np.uint32), offsets, "auto")
        assert keep_a.tolist() == want.tolist()
    lay = _layout(data, offsets, keep_a, upto_a, hide)
    starts = np.cumsum(lay.count) - lay.count
    got: dict[str, list[Any]] = {"desc": desc.tolist(), "flags": flags.tolist()}
    exp: dict[str, list[Any]] = {"desc": lay.desc.tolist(), "flags": lay.flags.tolist()}
    got["numbers"], exp["numbers"] = [], []
    for i in range(n):
        at = slice(int(starts[i]), int(starts[i] + lay.count[i]))
        d, r = lay.digits[None, at], lay.radix[None, at]
        if lay.flags[i] != _LONG:  # one walk, too small or empty: the number and space
            got["numbers"].append((int(x[i]), int(space[i])))
            exp["numbers"].append(tuple(int(v[0]) for v in _horner(d, r)))
        else:  # cut into chunks: theirs (x and space of a long value are not used)
            at0 = int(np.cumsum(nchunks)[i] - nchunks[i])
            got["numbers"].append([(int(cx[at0 + j]), int(cs[at0 + j])) for j in range(nchunks[i])])
            parts = pairwise(_bounds(int(lay.count[i])))
            exp["numbers"].append(
                [tuple(int(v[0]) for v in _horner(d[:, a:b], r[:, a:b])) for a, b in parts]
            )
    return {k: [got[k], exp[k]] for k in got}


@settings(max_examples=300, deadline=None)
@given(values=st.lists(shaped, min_size=1, max_size=10), hide=st.booleans(), data=st.data())
def test_shape_scan_native_equals_numpy_layout(
    values: list[str], hide: bool, data: st.DataObject
) -> None:
    """``shape_scan`` against :func:`biomask.masking.permute._layout` and ``_horner``: the
    descriptor of every byte (hidden tails as zeros), the flags, the number and space of
    every value (one walk, small or empty) and the chunks of long ones; with kept heads
    (``keep``, or the ``"auto"`` prefix) and kept tails (``upto``) anywhere, even past the
    value or crossed."""
    sizes = [len(v.encode()) for v in values]
    auto = data.draw(st.booleans())
    keep = None if auto else [data.draw(st.integers(-2, k + 2)) for k in sizes]
    upto = [data.draw(st.sampled_from([k, k - 1, 0]) | st.integers(-2, k + 2)) for k in sizes]
    for name, (got, want) in _scan(values, keep, upto, hide).items():
        assert got == want, name


@pytest.mark.parametrize("hide", [False, True])
def test_shape_scan_edge_cases_native_equal_numpy(hide: bool) -> None:
    values = [
        "", "SUBJ-42903202", "8KKN42RO2", "é", "ab", "9" * 19, "9" * 20, "z" * 13, "z" * 14,
        "Q" * 16 + "1", "SUBJ-" + "0" * 30, "jean.dupont.martin@example.org", "a\u00a0b٣c",
        "x" * 70, "ABCDEF-123456", "1a" * 40,
    ]  # fmt: skip
    sizes = [len(v.encode()) for v in values]
    for keep, upto in [
        ([0] * len(values), sizes),
        (None, sizes),
        ([2] * len(values), [max(k - 3, 0) for k in sizes]),
        ([5] * len(values), [1] * len(values)),  # kept head past the kept tail
    ]:
        for name, (got, want) in _scan(values, keep, upto, hide).items():
            assert got == want, name


def _permute(values: list[str], native: bool, **kw: Any) -> tuple[Any, ...]:
    with _path(native):
        res = PERM.permute(pa.array(values, pa.string()), **kw)
    return res.values.to_pylist(), res.small.tolist(), res.failed.tolist(), res.weak.tolist()


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(shaped, min_size=1, max_size=10, unique=True),
    tail=st.booleans(),
    decrypt=st.booleans(),
    data=st.data(),
)
def test_shape_place_native_equals_numpy(
    values: list[str], tail: bool, decrypt: bool, data: st.DataObject
) -> None:
    """The tokens ``shape_place`` writes back (every kind of span: digits only, mixed, with
    kept bytes inside, over 16 bytes, cut into chunks) against numpy's, end to end."""
    sizes = [len(v.encode()) for v in values]
    keep = data.draw(
        st.sampled_from([None, "auto"]) | st.just([data.draw(st.integers(0, k)) for k in sizes])
    )
    upto = data.draw(st.none() | st.just([data.draw(st.integers(0, k)) for k in sizes]))
    kw = {"keep": keep, "upto": None if upto is None else np.array(upto, np.int64)}
    kw |= {"tail_in_tweak": tail, "decrypt": decrypt}
    assert _permute(values, True, **kw) == _permute(values, False, **kw)


# -- phone numbers ---------------------------------------------------------------------
_PHONE_PIECES = st.sampled_from(
    [*"0123456789+ \t-()./é", "00", "+44", "+1", "+7", "+49", "\u00a0", "٣", "\U0001f4de"]
)


def _phone_layout(values: pa.Array, native: bool) -> tuple[Any, ...]:
    from biomask.masking.operators.tokens import phone_digits

    with _path(native):
        lay = phone_digits(values)
        national = lay.national()
        # new digits in place of the changing ones (each one up by 1): what a token puts
        digits = (np.frombuffer(national.buffers()[2] or b"", np.uint8) - 47) % 10 + 48
        replaced = lay.replaced(digits.astype(np.uint8)).to_pylist()
    return (
        lay.at.tolist(),
        lay.per_value.tolist(),
        lay.bad.tolist(),
        national.to_pylist(),
        replaced,
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_PHONE_PIECES, max_size=30).map("".join), min_size=1, max_size=8))
def test_phone_layout_native_equals_numpy(values: list[str]) -> None:
    arr = pa.array(values, pa.string())
    for a in (arr, arr.slice(1), arr.cast(pa.large_string())):
        assert _phone_layout(a, True) == _phone_layout(a, False)


def test_phone_layout_native_equals_numpy_at_scale() -> None:
    """10^5 numbers in many formats (some past 64 bytes, which the compiled helper reads
    byte by byte): the same digits taken and put as numpy's positions give."""
    rng = np.random.default_rng(7)
    pieces = np.array([*"0123456789", "+", " ", "-", "(", ")", "00", "+44", "é", "\u00a0"])
    sizes = rng.integers(0, 40, 100_000)
    values = ["".join(rng.choice(pieces, k)) for k in sizes]
    arr = pa.array(values, pa.string())
    assert _phone_layout(arr, True) == _phone_layout(arr, False)


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
    offs = np.array([0, len(data)], np.int64)
    for size in (9, 11):  # ten digits change
        with pytest.raises(ValueError, match="exactly the changing digits"):
            _kernels.phone_take(offs, data, keep, np.empty(size, np.uint8))
        with pytest.raises(ValueError, match="exactly the changing digits"):
            _kernels.phone_put(offs, data, keep, np.zeros(size, np.uint8), np.empty_like(data))
    with pytest.raises(ValueError, match="outside the data buffer"):
        _kernels.phone_take(np.array([0, 99], np.int64), data, keep, np.empty(10, np.uint8))
    with pytest.raises(ValueError, match="as long as the data"):
        _kernels.phone_put(offs, data, keep, np.zeros(10, np.uint8), np.empty(3, np.uint8))
    digits = np.empty(10, np.uint8)
    _kernels.phone_take(offs, data, keep, digits)
    assert digits.tobytes() == b"2079460958"
    out = np.empty_like(data)
    _kernels.phone_put(offs, data, keep, np.frombuffer(b"1234567890", np.uint8), out)
    assert out.tobytes() == b"+44 12 3456 7890"


# -- e-mail addresses ------------------------------------------------------------------
_MAIL_PIECES = st.sampled_from(
    [*"ab.@ \t\n\r\f\v-_é¿1Z", "\u00a0", "\u3000", "\U0001f600", "..", "@@", "x.org"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_MAIL_PIECES, max_size=30).map("".join), min_size=1, max_size=8))
def test_email_layout_native_equals_arrow_regex(values: list[str]) -> None:
    from biomask.masking.operators.tokens import _email_layout

    arr = pa.array(values, pa.string())
    for a in (arr, arr.slice(1), arr.cast(pa.large_string())):
        with _path(True):
            ok_n, local_n = _email_layout(a)
        with _path(False):
            ok_p, local_p = _email_layout(a)
        assert ok_n.tolist() == ok_p.tolist()
        # code points before the first "@" (all of them without one), accepted or not
        assert local_n.tolist() == local_p.tolist()


def test_email_layout_edge_cases_native_equal_arrow_regex() -> None:
    from biomask.masking.operators.tokens import _email_layout

    values = [
        "", "@", "a@b.c", "a@.bc", "a@b.", "a@bc", "@b.c", "a@@b.c", "a@b@c.d", "a @b.c",
        "a@b.c\n", "a\u00a0@b.c", "é@b.c", "\U0001f600x@y.z", "a@b..c", "a@b.c.",
        "x" * 62 + "@b.c", "x" * 60 + "@b.cd", "x" * 70 + "@example.org", "a@" + "b" * 61 + ".c",
        "jean.dupont@example.org",
    ]  # fmt: skip
    arr = pa.array(values, pa.string())
    with _path(True):
        ok_n, local_n = _email_layout(arr)
    with _path(False):
        ok_p, local_p = _email_layout(arr)
    assert ok_n.tolist() == ok_p.tolist()
    assert local_n.tolist() == local_p.tolist()
    assert ok_n.tolist()[2] and not ok_n.tolist()[3]


# -- the FF1 walk on VAES and on OpenSSL's AES ---------------------------------------------
# With VAES the kernel runs its own AES-256 and FF1 rounds (biomask/_aes.h, ff1_vaes); a
# single differing bit would change tokens from one CPU to the next, so both paths run on
# the same inputs: every bit length, limits from a full power of two down to just over
# half of it (a walk of several steps for many values), walks cut short (``bad``), batches
# of every size around the 8-, 16- and 32-value passes and the groups of 256.
def _needs_vaes() -> None:
    from biomask.masking import _kernels

    if "vaes" not in aes_impls(_kernels):
        pytest.skip("this CPU has no VAES/AVX-512: only OpenSSL's AES runs here")


def _walk_inputs(
    rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, nbits, tweaks and limits of n values, each kind of limit on about a quarter."""
    nbits = rng.integers(20, 65, n).astype(np.int64)
    big = random.Random(int(rng.integers(2**32)))  # limits up to 2**64 - 1, past int64
    limits = np.empty(n, np.uint64)
    for i, (b, kind) in enumerate(zip(nbits.tolist(), rng.integers(0, 4, n).tolist(), strict=True)):
        top = min(1 << b, 2**64 - 1)
        limits[i] = (
            top if kind == 0  # the whole space
            else top - big.randrange(1, 2**16) if kind == 1  # just below it
            else top // 2 + big.randrange(1, 2**16) if kind == 2  # just over half: long walks
            else big.randrange(top // 2 + 1, top + 1)
        )  # fmt: skip
    x = (rng.random(n) * limits.astype(float)).astype(np.uint64) % limits
    tweaks = rng.integers(0, 256, (n, 16)).astype(np.uint8)
    return x, nbits, tweaks, limits


def _walk(
    impl: str, key: bytes, inputs: tuple[np.ndarray, ...], decrypt: bool, max_walk: int = 400
) -> tuple[bytes, bytes]:
    from biomask.masking import _kernels

    x, nbits, tweaks, limits = inputs
    out, bad = x.copy(), np.zeros(len(x), np.uint8)
    with aes_path(_kernels, impl):
        _kernels.ff1_walk(key, out, nbits.copy(), tweaks, limits, decrypt, bad, max_walk)
    return out.tobytes(), bad.tobytes()


@pytest.mark.parametrize("decrypt", [False, True])
def test_ff1_walk_on_vaes_equals_openssl_on_1e5_values(decrypt: bool) -> None:
    _needs_vaes()
    rng = np.random.default_rng(11 + decrypt)
    key = rng.bytes(32)
    inputs = _walk_inputs(rng, 100_000)
    got = _walk("vaes", key, inputs, decrypt)
    assert got == _walk("evp", key, inputs, decrypt)
    x, nbits, tweaks, limits = inputs
    assert not np.frombuffer(got[1], np.uint8).any()
    back = _walk(
        "vaes", key, (np.frombuffer(got[0], np.uint64), nbits, tweaks, limits), not decrypt
    )
    assert back[0] == x.tobytes()
    # walks cut short after two steps: the same values are left outside, and marked bad
    short = _walk("vaes", key, inputs, decrypt, max_walk=2)
    assert short == _walk("evp", key, inputs, decrypt, max_walk=2)
    assert np.frombuffer(short[1], np.uint8).any()


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    decrypt=st.booleans(),
    max_walk=st.sampled_from([1, 3, 400]),
    auto=st.booleans(),
)
def test_ff1_walk_on_vaes_equals_openssl_on_any_batch(
    n: int, seed: int, decrypt: bool, max_walk: int, auto: bool
) -> None:
    """Batches of every size (the passes' masked tails, a second group), walks of any
    length, ``nbits == 0`` (found from the limit in C)."""
    _needs_vaes()
    rng = np.random.default_rng(seed)
    key = rng.bytes(32)
    x, nbits, tweaks, limits = _walk_inputs(rng, n)
    if auto:
        nbits = np.zeros(n, np.int64)
    inputs = (x, nbits, tweaks, limits)
    assert _walk("vaes", key, inputs, decrypt, max_walk) == _walk(
        "evp", key, inputs, decrypt, max_walk
    )
