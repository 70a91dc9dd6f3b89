"""The batched AES-256-GCM primitive: native helper and Python loop agree, byte for byte."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask.keys import aead
from biomask.keys.aead import RowKeys, Rows

PATHS = ["native", "python"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native" and aead._gcm is None:
        pytest.skip("the compiled helper biomask.keys._gcm was not built in this install")
    monkeypatch.setenv("BIOMASK_NATIVE_AEAD", "1" if request.param == "native" else "0")
    return str(request.param)


def test_the_native_helper_is_built_where_ci_requires_it() -> None:
    """CI sets BIOMASK_REQUIRE_NATIVE=1: a silent fall-back to the slow loop would pass
    every other test while the benchmarks measured something else."""
    if os.environ.get("BIOMASK_REQUIRE_NATIVE") != "1":
        pytest.skip("BIOMASK_REQUIRE_NATIVE is not set (CI sets it)")
    assert aead._gcm is not None, (
        "biomask.keys._gcm was not built: C compiler or OpenSSL headers missing"
    )


def _layout(sizes: list[int], toks: list[bytes], key_idx: list[int] | None, seed: int = 0) -> Rows:
    rng = np.random.default_rng(seed)
    n = len(sizes)
    src = rng.integers(0, 256, max(sum(sizes), 1), dtype=np.uint8)
    src_at = (
        np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        if n
        else np.zeros(0, np.int64)
    )
    nonces = rng.integers(0, 256, 12 * n, dtype=np.uint8)
    mid = np.frombuffer(b"".join(toks) or b"\0", np.uint8)
    mid_off = np.concatenate([[0], np.cumsum([len(t) for t in toks])]).astype(np.int64)
    ct_len = np.array(sizes, np.int64) + 16
    dst_at = (
        np.concatenate([[0], np.cumsum(ct_len)[:-1]]).astype(np.int64)
        if n
        else np.zeros(0, np.int64)
    )
    dst = np.zeros(max(int(ct_len.sum()), 1), np.uint8)
    rows = Rows(
        key_idx=None if key_idx is None else np.array(key_idx, np.int64),
        nonce_buf=nonces, nonce_at=np.arange(n, dtype=np.int64) * 12,
        src=src, src_at=src_at, length=np.array(sizes, np.int64),
        prefix=b"pre|", mid=mid, mid_off=mid_off, tails=[b"|t0", b"|tail-1"][: 1 if key_idx is None else 2],
        dst=dst, dst_at=dst_at,
    )  # fmt: skip
    return rows


def _open_layout(sealed: Rows) -> Rows:
    out = np.zeros(max(int(sealed.length.sum()), 1), np.uint8)
    pt_at = np.concatenate([[0], np.cumsum(sealed.length)[:-1]]).astype(np.int64)
    return Rows(
        key_idx=sealed.key_idx, nonce_buf=sealed.nonce_buf, nonce_at=sealed.nonce_at,
        src=sealed.dst, src_at=sealed.dst_at, length=sealed.length, prefix=sealed.prefix,
        mid=sealed.mid, mid_off=sealed.mid_off, tails=sealed.tails, dst=out, dst_at=pt_at,
    )  # fmt: skip


KEYS = [bytes(range(32)), bytes(range(32, 64))]


def test_each_row_is_what_aesgcm_gives(path: str) -> None:
    toks = [b"tok-a", b"", b"tok-ccc"]
    rows = _layout([2048, 5, 0], toks, [0, 1, 1])
    aead.seal_rows(RowKeys(KEYS), rows)
    for i, (size, tok) in enumerate(zip([2048, 5, 0], toks, strict=True)):
        k = int(rows.key_idx[i])  # type: ignore[index]
        nonce = rows.nonce_buf[12 * i : 12 * i + 12].tobytes()
        pt = rows.src[rows.src_at[i] : rows.src_at[i] + size].tobytes()
        want = AESGCM(KEYS[k]).encrypt(nonce, pt, b"pre|" + tok + rows.tails[k])
        assert rows.dst[rows.dst_at[i] : rows.dst_at[i] + size + 16].tobytes() == want
    back = _open_layout(rows)
    assert aead.open_rows(RowKeys(KEYS), back)
    assert back.dst[:2053].tobytes() == rows.src[:2053].tobytes()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
    flip=st.integers(0, 10**6),
)
def test_native_and_python_agree_and_any_flipped_byte_is_refused(
    sizes: list[int], seed: int, flip: int
) -> None:
    toks = [f"t{i}".encode() * (i % 3) for i in range(len(sizes))]
    key_idx = [i % 2 for i in range(len(sizes))]
    results = {}
    saved = os.environ.get("BIOMASK_NATIVE_AEAD")
    for p in PATHS:
        if p == "native" and aead._gcm is None:
            continue
        os.environ["BIOMASK_NATIVE_AEAD"] = "1" if p == "native" else "0"
        try:
            rows = _layout(sizes, toks, key_idx, seed)
            aead.seal_rows(RowKeys(KEYS), rows)
            results[p] = rows.dst.tobytes()
            back = _open_layout(rows)
            assert aead.open_rows(RowKeys(KEYS), back)
            assert back.dst[: sum(sizes)].tobytes() == rows.src[: sum(sizes)].tobytes()
            rows.dst[flip % int(rows.dst_at[-1] + sizes[-1] + 16)] ^= 1
            assert not aead.open_rows(RowKeys(KEYS), _open_layout(rows))
        finally:  # hypothesis runs many examples per test: no monkeypatch fixture here
            if saved is None:
                del os.environ["BIOMASK_NATIVE_AEAD"]
            else:
                os.environ["BIOMASK_NATIVE_AEAD"] = saved
    assert len(set(results.values())) == 1


def test_wrong_key_or_aad_is_refused(path: str) -> None:
    rows = _layout([64, 64], [b"a", b"b"], None)
    aead.seal_rows(RowKeys(KEYS[:1]), rows)
    assert aead.open_rows(RowKeys(KEYS[:1]), _open_layout(rows))
    assert not aead.open_rows(RowKeys(KEYS[1:]), _open_layout(rows))
    opened = _open_layout(rows)
    swapped = Rows(**{**opened.__dict__, "mid": np.frombuffer(b"ba", np.uint8)})  # tokens swapped
    assert not aead.open_rows(RowKeys(KEYS[:1]), swapped)


def test_positions_outside_a_buffer_are_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if aead._gcm is None:
        pytest.skip("the compiled helper biomask.keys._gcm was not built in this install")
    monkeypatch.setenv("BIOMASK_NATIVE_AEAD", "1")
    rows = _layout([64, 64], [b"a", b"b"], None)
    bad = Rows(**{**rows.__dict__, "src_at": np.array([0, 10**9], np.int64)})
    with pytest.raises(ValueError, match="outside its buffer"):
        aead.seal_rows(RowKeys(KEYS[:1]), bad)
    bad = Rows(**{**rows.__dict__, "key_idx": np.array([0, 5], np.int64)})
    with pytest.raises(ValueError, match="outside its buffer"):
        aead.seal_rows(RowKeys(KEYS[:1]), bad)
    bad = Rows(**{**rows.__dict__, "dst_at": np.array([0, -1], np.int64)})
    with pytest.raises(ValueError, match="outside its buffer"):
        aead.seal_rows(RowKeys(KEYS[:1]), bad)
    # opening: positions come from data files, so a bad one is a plain failure
    aead.seal_rows(RowKeys(KEYS[:1]), rows)
    opened = _open_layout(rows)
    assert aead.open_rows(RowKeys(KEYS[:1]), opened)
    past_end = Rows(**{**opened.__dict__, "src_at": np.array([0, len(rows.dst) - 8], np.int64)})
    assert aead.open_rows(RowKeys(KEYS[:1]), past_end) is False


def test_keys_refuse_pickling_and_never_print_bytes() -> None:
    keys = RowKeys(KEYS)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)
    assert "000102" not in repr(keys) and repr(keys) == "RowKeys(<2 keys>)"
    with pytest.raises(ValueError, match="32-byte"):
        RowKeys([b"short"])
