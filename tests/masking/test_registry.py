"""The registry's dictionary encoding equals Arrow's, on the compiled helper and without it.

Every token operator finds a batch's distinct values through
:func:`biomask.masking.registry.dictionary_encode` and expands its per-value results with
the indices; a dictionary in another order, or an index off by one, would give rows each
other's tokens. So the compiled table is compared with Arrow's hash kernel on arbitrary
strings (nulls, empty strings, non-ASCII, slices, large strings) and at 10^6 values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask import _native
from biomask.masking.registry import _DISTINCT_KEY, dictionary_encode, expand, map_distinct
from tests.native import kernels_path

BUILT = _native._import("biomask.masking._kernels") is not None
needs_helper = pytest.mark.skipif(not BUILT, reason="biomask.masking._kernels was not built")

_PIECES = st.sampled_from(["", "a", "A", "ab", "é", "\U0001f600", " ", "SUBJ-", "0", "x" * 17])
values = st.lists(
    st.none() | st.lists(_PIECES, max_size=4).map("".join) | st.text(max_size=24), max_size=60
)


def _check(arr: pa.Array) -> None:
    for native in (True, False):
        with kernels_path(native):
            got = dictionary_encode(arr)
        want = arr.dictionary_encode()
        assert got.type == want.type
        assert got.dictionary.equals(want.dictionary)
        assert got.indices.equals(want.indices)


@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 5))
def test_dictionary_encode_equals_arrow(items: list[str | None], start: int) -> None:
    arr = pa.array(items, pa.string())
    for a in (arr, arr.slice(min(start, len(arr))), arr.cast(pa.large_string())):
        _check(a)


@needs_helper
def test_dictionary_encode_at_a_million_values() -> None:
    ids = pa.array([f"SUBJ-{i:08d}" for i in range(1_000_000)])
    enc = dictionary_encode(ids)
    assert enc.dictionary is ids or enc.dictionary.equals(ids)  # all distinct: as they came
    assert np.array_equal(enc.indices.to_numpy(), np.arange(1_000_000))
    rng = np.random.default_rng(7)
    repeated = ids.take(pa.array(rng.integers(0, 50_000, 1_000_000)))
    mask = rng.random(1_000_000) < 0.01
    with_nulls = pa.array(repeated.to_numpy(zero_copy_only=False), mask=mask)
    for a in (repeated, with_nulls):
        got, want = dictionary_encode(a), a.dictionary_encode()
        assert got.dictionary.equals(want.dictionary)
        assert got.indices.equals(want.indices)


def test_dictionary_encode_other_types_are_arrows() -> None:
    ints = pa.array([3, None, 3, 7])
    assert dictionary_encode(ints).equals(ints.dictionary_encode())
    blobs = pa.array([b"\xff", b"\xff", None], pa.binary())
    assert dictionary_encode(blobs).equals(blobs.dictionary_encode())
    assert len(dictionary_encode(pa.array([], pa.string())).dictionary) == 0


@settings(max_examples=200, deadline=None)
@given(values)
def test_expand_equals_take(items: list[str | None]) -> None:
    arr = pa.array(items, pa.string())
    enc = dictionary_encode(arr)
    per_value = pa.array([f"<{v}>" for v in enc.dictionary.to_pylist()], pa.string())
    assert expand(per_value, enc.indices).equals(per_value.take(enc.indices))


def test_expand_skips_the_take_only_when_every_row_is_its_own_value() -> None:
    ids = pa.array(["b", "a", "c"])
    enc = dictionary_encode(ids)
    per_value = pa.array(["B", "A", "C"])
    assert expand(per_value, enc.indices) is per_value  # no copy
    with_null = dictionary_encode(pa.array(["b", None, "a"]))
    assert expand(pa.array(["B", "A"]), with_null.indices).to_pylist() == ["B", None, "A"]


def test_map_distinct_runs_once_per_distinct_value() -> None:
    seen: list[int] = []

    def upper(uniq: pa.Array) -> pa.Array:
        seen.append(len(uniq))
        return pa.array([None if v is None else v.upper() for v in uniq.to_pylist()])

    out = map_distinct(pa.array(["ab", None, "cd", "ab", "cd"]), upper)
    assert out.to_pylist() == ["AB", None, "CD", "AB", "CD"]
    assert seen == [2]


@needs_helper
def test_distinct_kernel_refuses_bad_buffers() -> None:
    from biomask.masking import _kernels

    data = np.frombuffer(b"abcabc", dtype=np.uint8)
    first, index = np.empty(2, np.int64), np.empty(2, np.int32)
    with pytest.raises(ValueError, match="outside the data buffer"):
        _kernels.distinct(np.array([0, 3, 99], np.int64), data, _DISTINCT_KEY, b"", first, index)
    with pytest.raises(ValueError, match="valid: expected 2 bytes"):
        _kernels.distinct(np.array([0, 3, 6], np.int64), data, _DISTINCT_KEY, b"\x01", first, index)
    with pytest.raises(ValueError, match="index: expected 8 bytes"):
        _kernels.distinct(
            np.array([0, 3, 6], np.int64), data, _DISTINCT_KEY, b"", first, np.empty(3, np.int32)
        )
    assert (
        _kernels.distinct(np.array([0, 3, 6], np.int64), data, _DISTINCT_KEY, b"", first, index)
        == 1
    )
    assert index.tolist() == [0, 0] and first[0] == 0
