"""The blocked engine finds exactly the pairs a brute-force numpy product finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biomask.errors import BiomaskError
from biomask.identity.analysis import ScanStats, scan_pairs
from biomask.identity.engine import NumpyBackend, backend_for, pairs_at_or_above
from biomask.identity.templates import TemplateSet
from tests.identity.conftest import near, unit


def brute(a: np.ndarray, b: np.ndarray, thr: float) -> set[tuple[int, int]]:
    s = a @ b.T
    i, j = np.nonzero(s >= np.float32(thr))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def found(pairs: object) -> set[tuple[int, int]]:
    return set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))  # type: ignore[attr-defined]


@pytest.mark.parametrize("tile", [64, 1000, 1 << 20])
def test_pairs_equal_brute_force_just_above_and_below_a_planted_pair(tile: int) -> None:
    rng = np.random.default_rng(1)
    a, b = unit(rng, 300, 32), unit(rng, 500, 32)
    b[7] = near(rng, a[11:12], 0.6)[0]
    full = a @ b.T
    s = float(full[11, 7])
    others = np.sort(full.ravel())
    gap = float(others[others < s][-1])  # the next lower score
    assert s - gap > 1e-4
    be = NumpyBackend(tile)
    # float32 sums in another order differ by ~1e-7: 1e-5 either side is "just" there
    below, above = s - 1e-5, s + 1e-5
    for thr in (below, (s + gap) / 2, above):
        assert found(be.pairs(a, b, thr)) == brute(a, b, thr)
    assert (11, 7) in found(be.pairs(a, b, below))
    assert (11, 7) not in found(be.pairs(a, b, above))
    assert found(be.pairs(a, b, 0.2)) == brute(a, b, 0.2) and len(brute(a, b, 0.2)) > 50


def test_self_join_is_the_upper_triangle() -> None:
    rng = np.random.default_rng(2)
    a = unit(rng, 257, 16)
    got = found(pairs_at_or_above(a, a, 0.5, backend=NumpyBackend(100), upper_from=0))
    want = {(i, j) for i, j in brute(a, a, 0.5) if i < j}
    assert got == want and want


@pytest.mark.parametrize(("block_rows", "batch"), [(1 << 20, 1000), (97, 53)])
def test_streamed_scan_over_files_equals_brute_force(
    planted: dict[str, object], block_rows: int, batch: int
) -> None:
    a, b = planted["a"], planted["b"]
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    want = brute(a, b, 0.3)
    ta = TemplateSet("a.parquet", "subject_id", "template", batch_size=batch)
    tb = TemplateSet("b.parquet", "subject_id", "template", batch_size=batch)
    stats = ScanStats()
    got: set[tuple[int, int]] = set()
    for pb in scan_pairs(
        ta, tb, 0.3, block_rows=block_rows, backend=NumpyBackend(500), stats=stats
    ):
        got |= set(zip(pb.column("a_row").to_pylist(), pb.column("b_row").to_pylist(), strict=True))
        ids = pb.column("a_id").to_pylist()
        assert all(
            ids[k] == planted["a_ids"][r] for k, r in enumerate(pb.column("a_row").to_pylist())
        )  # type: ignore[index]
    assert got == want
    assert stats.pairs_scored == len(a) * len(b)


def test_self_scan_different_ids_leaves_out_own_captures(work: Path, planted: dict) -> None:
    a = planted["a"]
    ids = np.array(planted["a_ids"])
    s = a @ a.T
    iu = np.triu_indices(len(a), 1)
    keep = (s[iu] >= np.float32(0.25)) & (ids[iu[0]] != ids[iu[1]])
    want = set(zip(iu[0][keep].tolist(), iu[1][keep].tolist(), strict=True))
    for block_rows in (1 << 20, 128):
        ts = TemplateSet("a.parquet", "subject_id", "template", batch_size=70)
        got: set[tuple[int, int]] = set()
        for pb in scan_pairs(ts, None, 0.25, block_rows=block_rows, different_ids=True):
            got |= set(
                zip(pb.column("a_row").to_pylist(), pb.column("b_row").to_pylist(), strict=True)
            )
        assert got == want and want


def test_cuda_device_fails_clearly_without_a_gpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BiomaskError, match="no CUDA device is available"):
        backend_for("cuda")
    with pytest.raises(BiomaskError, match="unknown device 'tpu'"):
        backend_for("tpu")


def test_torch_backend_finds_the_same_pairs() -> None:
    """The CUDA backend's code, run by torch on the host: same pairs as numpy."""
    pytest.importorskip("torch")
    from biomask.identity.engine import TorchBackend

    rng = np.random.default_rng(3)
    a, b = unit(rng, 300, 32), unit(rng, 400, 32)
    be = TorchBackend(5000, device="cpu")
    assert found(be.pairs(a, b, 0.45)) == brute(a, b, 0.45)
    assert found(be.pairs(a, b, 0.45)) == brute(a, b, 0.45)  # b reused from the device
    got = found(be.pairs(a, a, 0.4, upper_from=0))
    assert got == {(i, j) for i, j in brute(a, a, 0.4) if i < j}
