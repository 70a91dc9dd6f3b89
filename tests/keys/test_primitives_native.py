"""The PRF's compiled kernels and its numpy code agree byte for byte, and both match AES.

Tokens must not change when a package is reinstalled with or without a C compiler, so
every output of :class:`DeterministicPrf` is compared across the two paths, and pinned to
an AES computation done by hand here with ``cryptography``. The compiled path has two
AES-256 implementations of its own (VAES where the CPU has it, else OpenSSL's EVP; see
biomask/_aes.h): both are pinned to ``cryptography``'s AES and compared with each other.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
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
from tests.native import aes_impls, aes_path, kernels_path

SECRET = bytes(range(32))
PRF = DeterministicPrf(KeyHandle(SECRET, "00", "test"))
BUILT = _native._import(primitives.PRF_HELPER) is not None
PATHS = ["native", "numpy"] if BUILT else ["numpy"]
needs_native = pytest.mark.skipif(not BUILT, reason="biomask.keys._prf was not built")
AES_IMPLS = aes_impls(_native._import(primitives.PRF_HELPER)) if BUILT else []
needs_vaes = pytest.mark.skipif(
    "vaes" not in AES_IMPLS, reason="no VAES/AVX-512 on this CPU (or _prf not built)"
)


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


# -- the compiled AES-256: VAES and OpenSSL's EVP ----------------------------------------


@pytest.mark.parametrize(
    "impl",
    [pytest.param(i, marks=needs_vaes if i == "vaes" else needs_native) for i in ["evp", "vaes"]],
)
def test_compiled_aes_ecb_matches_cryptography(impl: str) -> None:
    """Every block count from 1 to 40 (the VAES path's 16-block loop, its 4-block steps and
    masked tails of 1-3 blocks) and a large one across many groups, each on a fresh key."""
    from biomask.keys import _prf

    rng = np.random.default_rng(17)
    with aes_path(_prf, impl):
        for count in [*range(1, 41), 256 * 17 + 13]:
            key, data = rng.bytes(32), rng.bytes(16 * count)
            out = np.empty(16 * count, np.uint8)
            _prf._ecb(key, data, out)
            assert out.tobytes() == _ecb(key, data), count
        # FIPS 197, C.3: the AES-256 known answer
        out = np.empty(16, np.uint8)
        _prf._ecb(bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff"), out)
        assert out.tobytes().hex() == "8ea2b7ca516745bfeafc49904b496089"


@needs_vaes
def test_prf_on_vaes_equals_openssl_on_1e5_values() -> None:
    """Seeds and keystreams of 10^5 values of mixed lengths (short, one block, many)."""
    from biomask.keys import _prf

    rng = np.random.default_rng(19)
    lens = rng.choice([0, 1, 15, 16, 17, 20, 31, 33, 90, 200], 100_000)
    values = [rng.bytes(int(n)) for n in lens]
    got = {}
    for impl in ["evp", "vaes"]:
        with aes_path(_prf, impl):
            seeds = PRF.seeds(values)
            stream = PRF.stream(values, 50)
            out = np.empty(int(lens.sum()), np.uint8)
            _prf.ctr_stream(_hkdf("prf/aes-ctr"), seeds, lens.astype(np.int64), out)
        got[impl] = (seeds.tobytes(), stream.tobytes(), out.tobytes())
    assert got["vaes"] == got["evp"]


@needs_vaes
@settings(max_examples=100, deadline=None)
@given(values=values_st, length=st.integers(0, 70))
def test_prf_on_vaes_equals_openssl_on_any_batch(values: list[bytes], length: int) -> None:
    from biomask.keys import _prf

    got = []
    for impl in ["evp", "vaes"]:
        with aes_path(_prf, impl):
            got.append((PRF.seeds(values).tobytes(), PRF.stream(values, length).tobytes()))
    assert got[0] == got[1]


def _seeds_on(impl: str, key: bytes, offsets: np.ndarray, data: Any) -> bytes:
    """``cbc_mac`` itself on one AES-256 implementation (the VAES one has its own fused
    CBC-MAC, with the chaining states in registers)."""
    from biomask.keys import _prf

    out = np.empty((len(offsets) - 1, 16), np.uint8)
    with aes_path(_prf, impl):
        _prf.cbc_mac(key, offsets, data, out)
    return out.tobytes()


def _offsets(lens: Any, start: int) -> np.ndarray:
    return (start + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])).astype(np.int64)


@needs_vaes
def test_cbc_mac_on_vaes_equals_openssl_on_1e5_values() -> None:
    """10^5 values of 0 to 100 bytes (empty ones too), the first not at offset 0, the last
    ending at the buffer's end; batches of every size up to 70 (idle lanes); a few long
    values at the end of a batch (the fused path's narrower passes)."""
    rng = np.random.default_rng(23)
    for lens, start in [(rng.integers(0, 101, 100_000), 7), (rng.integers(0, 41, 100_000), 0)]:
        offsets = _offsets(lens, start)
        data, key = rng.bytes(int(offsets[-1])), rng.bytes(32)
        assert _seeds_on("vaes", key, offsets, data) == _seeds_on("evp", key, offsets, data)
    for n in range(71):
        lens = rng.choice([0, 1, 15, 16, 17, 33, 300], n)
        offsets = _offsets(lens, int(rng.integers(0, 3)))
        data, key = rng.bytes(int(offsets[-1])), rng.bytes(32)
        assert _seeds_on("vaes", key, offsets, data) == _seeds_on("evp", key, offsets, data)
    for long in range(12):  # long values last: the passes narrow to two registers, then one
        lens = np.r_[rng.integers(0, 40, 100), rng.integers(500, 3000, long), [7] * (long % 3)]
        offsets = _offsets(lens, 1)
        data, key = rng.bytes(int(offsets[-1])), rng.bytes(32)
        assert _seeds_on("vaes", key, offsets, data) == _seeds_on("evp", key, offsets, data)


@needs_native
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through libc")
@pytest.mark.parametrize("impl", AES_IMPLS)
def test_cbc_mac_reads_no_byte_outside_the_data(impl: str) -> None:
    """The data between two pages that cannot be read: values of every length up to 70
    that start at the page's start or end at its end (a byte past them would crash)."""
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    buf = mmap.mmap(-1, 3 * page)
    rng = np.random.default_rng(29)
    buf[page : 2 * page] = rng.bytes(page)
    base = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(base)
    del base
    assert libc.mprotect(addr, page, 0) == 0
    assert libc.mprotect(addr + 2 * page, page, 0) == 0
    try:
        data = memoryview(buf)[page : 2 * page]
        key = rng.bytes(32)
        for length in range(71):
            for lens, start in [([length, 3], 0), ([5, length], page - 5 - length)]:
                offsets = _offsets(lens, start)
                assert _seeds_on(impl, key, offsets, data) == _seeds_on(
                    "evp", key, offsets, bytes(data)
                )
        data.release()
    finally:
        assert libc.mprotect(addr, 3 * page, mmap.PROT_READ | mmap.PROT_WRITE) == 0
        buf.close()


@needs_vaes
@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.binary(max_size=100), max_size=80),
    start=st.integers(0, 40),
    tail=st.integers(0, 20),
)
def test_cbc_mac_on_vaes_equals_openssl_on_any_values(
    values: list[bytes], start: int, tail: int
) -> None:
    offsets = _offsets([len(v) for v in values], start)
    data = bytes(range(start)) + b"".join(values) + b"\xff" * tail
    key = bytes(range(1, 33))
    assert _seeds_on("vaes", key, offsets, data) == _seeds_on("evp", key, offsets, data)


@needs_native
def test_aes_impl_switch() -> None:
    """VAES is the default where the CPU has it; ``BIOMASK_AES=evp``, read when the module
    is imported, forces OpenSSL's; no other name is taken."""
    from biomask.keys import _prf

    code = "from biomask.keys import _prf; from biomask.masking import _kernels; " + (
        "print(_prf._aes_impl(), _kernels._aes_impl())"
    )

    def impls(value: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "BIOMASK_AES"}
        # the biomask under test, wherever it was imported from
        src = str(Path(primitives.__file__).parents[2])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        if value is not None:
            env["BIOMASK_AES"] = value
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    best = AES_IMPLS[-1]
    assert impls(None) == f"{best} {best}"
    assert impls("evp") == "evp evp"
    with pytest.raises(ValueError, match="not available"):
        _prf._aes_impl("aesni")


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
    with pytest.raises(ValueError):  # not whole blocks
        _kernels._ecb(key, bytes(17), np.empty(17, np.uint8))
    with pytest.raises(ValueError):  # output of the wrong size
        _kernels._ecb(key, bytes(32), np.empty(16, np.uint8))
