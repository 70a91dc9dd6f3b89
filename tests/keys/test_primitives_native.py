"""The PRF's compiled kernels and its numpy code agree byte for byte, and both match AES.

Tokens must not change when a package is reinstalled with or without a C compiler, so
every output of :class:`DeterministicPrf` is compared across the two paths, and pinned to
an AES computation done by hand here with ``cryptography``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask import _native
from biomask.keys import primitives
from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import DeterministicPrf, native_available
from tests.native import kernels_path

SECRET = bytes(range(32))
PRF = DeterministicPrf(KeyHandle(SECRET, "00", "test"))
BUILT = _native._import(primitives.PRF_HELPER) is not None
PATHS = ["native", "numpy"] if BUILT else ["numpy"]
needs_native = pytest.mark.skipif(not BUILT, reason="biomask.keys._prf was not built")


def _path(name: str) -> AbstractContextManager[None]:
    """Run the body on one path (``"native"`` or ``"numpy"``)."""
    return kernels_path(name == "native")


def _both(fn: Callable[[], Any]) -> list[Any]:
    """``fn()`` on each path, as bytes (arrays) or as is."""
    out = []
    for p in PATHS:
        with _path(p):
            r = fn()
        out.append(r.tobytes() if isinstance(r, np.ndarray) else r)
    return out


def test_the_kernels_are_built_where_ci_requires_it() -> None:
    """CI sets BIOMASK_REQUIRE_NATIVE=1: a silent fall-back to numpy would pass every
    other test while the benchmarks measured something else."""
    if os.environ.get("BIOMASK_REQUIRE_NATIVE") != "1":
        pytest.skip("BIOMASK_REQUIRE_NATIVE is not set (CI sets it)")
    assert BUILT, "biomask.keys._prf was not built: C compiler or OpenSSL headers missing"


@needs_native
def test_native_available_follows_the_switch() -> None:
    with _path("native"):
        assert native_available()
    with _path("numpy"):
        assert not native_available()


# -- known answers ------------------------------------------------------------------------


def _hkdf(info: str) -> bytes:
    return HKDF(SHA256(), 32, salt=b"biomask/hkdf/v1", info=info.encode()).derive(SECRET)


def _ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def _seed_by_hand(value: bytes) -> bytes:
    """CBC-MAC, zero IV: the length block, then the value zero-padded to 16 bytes."""
    msg = len(value).to_bytes(8, "big") + b"bm-prf-1" + value + b"\0" * (-len(value) % 16)
    state = bytes(16)
    for i in range(0, len(msg), 16):
        state = _ecb(
            _hkdf("prf/cbc-mac"), bytes(a ^ b for a, b in zip(state, msg[i : i + 16], strict=True))
        )
    return state


def _stream_by_hand(value: bytes, length: int) -> bytes:
    """Counter blocks: the seed with its last 4 bytes XOR the big-endian block number."""
    seed = _seed_by_hand(value)
    blocks = b"".join(
        seed[:12] + bytes(a ^ b for a, b in zip(seed[12:], i.to_bytes(4, "big"), strict=True))
        for i in range((length + 15) // 16)
    )
    return _ecb(_hkdf("prf/aes-ctr"), blocks)[:length]


VALUE = b"SUBJ-00012345"
LONG = bytes(range(200))  # 13 blocks, a partial last one


@pytest.mark.parametrize("path", PATHS)
def test_seeds_and_streams_match_aes_by_hand(path: str) -> None:
    with _path(path):
        seeds = PRF.seeds([VALUE, b"", LONG])
        stream = PRF.stream([VALUE, LONG], 40)
    assert seeds.tobytes() == _seed_by_hand(VALUE) + _seed_by_hand(b"") + _seed_by_hand(LONG)
    assert stream.tobytes() == _stream_by_hand(VALUE, 40) + _stream_by_hand(LONG, 40)
    # pinned too: a change of construction (not just of code path) changes every token
    assert seeds[0].tobytes().hex() == "289d5c28bc38718e8bf5fd3ecf13f796"
    assert stream[0, :16].tobytes().hex() == "7c0a2590adae533fa24852a200558ef4"


@needs_native
def test_the_compiled_keystream_takes_a_length_per_value() -> None:
    """``ctr_stream`` writes keystreams of any lengths back to back (``stream`` passes equal
    ones): empty and partial-block streams too, pinned to AES by hand."""
    from biomask.keys import _prf

    seeds = PRF.seeds([VALUE, b"", LONG])
    out = np.empty(38, np.uint8)
    _prf.ctr_stream(_hkdf("prf/aes-ctr"), seeds, np.array([5, 0, 33], np.int64), out)
    assert out.tobytes() == _stream_by_hand(VALUE, 5) + _stream_by_hand(LONG, 33)


# -- native == numpy ----------------------------------------------------------------------

values_st = st.lists(
    st.one_of(st.binary(max_size=20), st.binary(min_size=60, max_size=150)), max_size=40
)


def _as(kind: str, values: list[bytes], start: int) -> Any:
    """The same values as a list or as Arrow arrays, sliced so that offset != 0."""
    if kind == "list":
        return values
    typ = {"binary": pa.binary(), "large_binary": pa.large_binary()}[kind]
    pad = [b"pad"] * start
    return pa.array(pad + values, typ).slice(start)


@needs_native
@settings(max_examples=150, deadline=None)
@given(
    values=values_st,
    kind=st.sampled_from(["list", "binary", "large_binary"]),
    start=st.integers(0, 3),
    length=st.integers(0, 70),
    modulus=st.integers(1, 2**24),
)
def test_seeds_stream_and_integers_agree(
    values: list[bytes], kind: str, start: int, length: int, modulus: int
) -> None:
    vals = _as(kind, values, start)
    a, b = _both(lambda: PRF.seeds(vals))
    assert a == b
    a, b = _both(lambda: PRF.stream(vals, length))
    assert a == b
    a, b = _both(lambda: PRF.integers(vals, modulus))
    assert a == b


@needs_native
def test_nulls_are_seeded_as_empty_values_on_both_paths() -> None:
    arr = pa.array([b"x", None, b""], pa.binary())
    a, b = _both(lambda: PRF.seeds(arr))
    assert a == b
    assert a[16:32] == a[32:48]


@needs_native
def test_large_batches_cross_the_group_boundaries() -> None:
    """Thousands of values of mixed lengths: slots are refilled and retired in C."""
    rng = np.random.default_rng(7)
    values = [rng.bytes(int(n)) for n in rng.integers(0, 90, 3000)]
    a, b = _both(lambda: PRF.seeds(values))
    assert a == b
    a, b = _both(lambda: PRF.stream(values, 40))
    assert a == b


# -- the C side refuses what does not fit -------------------------------------------------


@needs_native
def test_kernels_check_every_offset_and_size() -> None:
    from biomask.keys import _prf as _kernels

    key = bytes(32)
    data = b"abcdef"
    out = np.empty((2, 16), np.uint8)
    with pytest.raises(ValueError):  # past the end of the data
        _kernels.cbc_mac(key, np.array([0, 3, 7], np.int64), data, out)
    with pytest.raises(ValueError):  # decreasing
        _kernels.cbc_mac(key, np.array([0, 4, 3], np.int64), data, out)
    with pytest.raises(ValueError):  # negative
        _kernels.cbc_mac(key, np.array([-1, 3, 6], np.int64), data, out)
    with pytest.raises(ValueError):  # output of the wrong size
        _kernels.cbc_mac(key, np.array([0, 6], np.int64), data, out)
    with pytest.raises(ValueError):  # short key
        _kernels.cbc_mac(key[:16], np.array([0, 3, 6], np.int64), data, out)
    with pytest.raises(TypeError):  # read-only output
        _kernels.cbc_mac(key, np.array([0, 3, 6], np.int64), data, bytes(32))
    seeds = np.zeros((2, 16), np.uint8)
    with pytest.raises(ValueError):  # lengths sum past the output
        _kernels.ctr_stream(key, seeds, np.array([5, 6], np.int64), np.empty(10, np.uint8))
    with pytest.raises(ValueError):  # negative length
        _kernels.ctr_stream(key, seeds, np.array([-1, 6], np.int64), np.empty(5, np.uint8))
    with pytest.raises(ValueError):  # seeds and lengths disagree
        _kernels.ctr_stream(key, seeds, np.array([1], np.int64), np.empty(1, np.uint8))
