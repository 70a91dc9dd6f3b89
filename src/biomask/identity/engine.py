"""Exact blocked cosine similarity: every pair at or above a threshold, in bounded memory.

Templates arrive L2-normalised as float32 rows, so cosine similarity is a dot product and
a tile of similarities is one matrix product (BLAS ``sgemm`` through numpy, or torch on a
CUDA device). Nothing here ever holds a full similarity matrix: a tile of at most
``tile_elements`` scores is computed, scanned for scores at or above the threshold, and
dropped; only the (few) pairs found leave this module. Memory is therefore the two
operand blocks plus one tile, whatever the sizes of the sets.

The scan is exact: no approximate index, no pruning by norms or clusters. Every pair of
the two blocks is scored, the same way a brute-force ``a @ b.T`` scores it (float32
products, float32 accumulation), and compared with the threshold as a float32.

The threshold scan is the part numpy makes expensive: a boolean mask over a whole tile is
one pass writing a byte per score, and ``nonzero`` a second pass over it. Leakage pairs are
rare, so the scan first takes each tile row's maximum (one read-only pass that numpy
vectorises) and looks for pairs only in the rows whose maximum reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from biomask.errors import BiomaskError, MissingDependencyError

__all__ = [
    "DEFAULT_TILE_ELEMENTS",
    "Backend",
    "NumpyBackend",
    "PairArrays",
    "TorchBackend",
    "backend_for",
    "pairs_at_or_above",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DEFAULT_TILE_ELEMENTS = 1 << 23
"""Scores per tile (32 MiB of float32): large enough for BLAS to run at full speed on a
few cores, small enough to stay in the last-level cache's neighbourhood for the scan."""


@dataclass(frozen=True)
class PairArrays:
    """Pairs found between a left and a right block, as positions within those blocks."""

    left: I64
    right: I64
    similarity: F32

    def __len__(self) -> int:
        return len(self.left)

    @staticmethod
    def empty() -> PairArrays:
        return PairArrays(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @staticmethod
    def concat(parts: list[PairArrays]) -> PairArrays:
        if not parts:
            return PairArrays.empty()
        if len(parts) == 1:
            return parts[0]
        return PairArrays(
            np.concatenate([p.left for p in parts]),
            np.concatenate([p.right for p in parts]),
            np.concatenate([p.similarity for p in parts]),
        )


class Backend(Protocol):
    """Where tiles are multiplied: the host's BLAS, or a CUDA device."""

    name: str

    def pairs(
        self,
        left: F32,
        right: F32,
        threshold: float,
        *,
        upper_from: int | None = None,
    ) -> PairArrays:
        """Pairs ``(i, j)`` with ``left[i] . right[j] >= threshold``.

        ``upper_from``: for a self-join, the global row of ``right[0]`` minus that of
        ``left[0]``; only pairs with ``j + upper_from > i`` (strictly above the diagonal)
        are returned, and tiles wholly on or below the diagonal are not computed.
        """
        ...


def _tile_shape(n_left: int, n_right: int, dim: int, tile_elements: int) -> tuple[int, int]:
    """Rows and columns of one tile: at most ``tile_elements`` scores.

    The left side gets the larger share: each tile row's maximum is one contiguous
    reduction, which is cheapest on long rows.
    """
    cols = min(n_right, max(256, int(np.sqrt(tile_elements / 4))))
    rows = min(n_left, max(1, tile_elements // max(cols, 1)))
    return rows, cols


class NumpyBackend:
    """Tiles multiplied by numpy's BLAS on the host (all its threads).

    Parameters
    ----------
    tile_elements:
        Scores per tile; memory used by a scan is this many float32 values, plus the
        operands.
    """

    name = "cpu"

    def __init__(self, tile_elements: int = DEFAULT_TILE_ELEMENTS) -> None:
        if tile_elements < 1:
            raise BiomaskError(f"tile size must be at least 1 score, not {tile_elements}")
        self.tile_elements = tile_elements
        self._buf: F32 | None = None

    def _scratch(self, rows: int, cols: int) -> F32:
        need = rows * cols
        if self._buf is None or self._buf.size < need:
            self._buf = np.empty(need, dtype=np.float32)
        return self._buf[:need].reshape(rows, cols)

    def pairs(
        self,
        left: F32,
        right: F32,
        threshold: float,
        *,
        upper_from: int | None = None,
    ) -> PairArrays:
        n, m = len(left), len(right)
        if n == 0 or m == 0:
            return PairArrays.empty()
        thr = np.float32(threshold)
        tr, tc = _tile_shape(n, m, left.shape[1], self.tile_elements)
        found: list[PairArrays] = []
        for r0 in range(0, n, tr):
            r1 = min(r0 + tr, n)
            lt = left[r0:r1]
            for c0 in range(0, m, tc):
                c1 = min(c0 + tc, m)
                if upper_from is not None and c1 - 1 + upper_from <= r0:
                    continue  # the whole tile is on or below the diagonal
                out = self._scratch(r1 - r0, c1 - c0)
                np.matmul(lt, right[c0:c1].T, out=out)
                hot = np.flatnonzero(out.max(axis=1) >= thr)
                if not len(hot):
                    continue
                sub = out[hot]
                i, j = np.nonzero(sub >= thr)
                gi = hot[i] + r0
                gj = j + c0
                sims = sub[i, j]
                if upper_from is not None:
                    keep = gj + upper_from > gi
                    gi, gj, sims = gi[keep], gj[keep], sims[keep]
                if len(gi):
                    found.append(PairArrays(gi.astype(np.int64), gj.astype(np.int64), sims.copy()))
        return PairArrays.concat(found)

    def tiles(
        self, left: F32, right: F32, *, upper_from: int | None = None
    ) -> Iterator[tuple[int, int, F32]]:
        """Every tile of ``left @ right.T`` as ``(row0, col0, scores)``; the scores array
        is reused for the next tile (copy what you keep). With ``upper_from`` (as in
        :meth:`pairs`), tiles wholly on or below the diagonal are not computed."""
        n, m = len(left), len(right)
        if n == 0 or m == 0:
            return
        tr, tc = _tile_shape(n, m, left.shape[1], self.tile_elements)
        for r0 in range(0, n, tr):
            r1 = min(r0 + tr, n)
            for c0 in range(0, m, tc):
                c1 = min(c0 + tc, m)
                if upper_from is not None and c1 - 1 + upper_from <= r0:
                    continue
                out = self._scratch(r1 - r0, c1 - c0)
                np.matmul(left[r0:r1], right[c0:c1].T, out=out)
                yield r0, c0, out


class TorchBackend:
    """Tiles multiplied by torch on a CUDA device; pairs found on the device.

    The left block is copied to the device once per call and the right block tile by tile;
    only the pairs found come back to the host.
    """

    name = "cuda"

    def __init__(self, tile_elements: int = 1 << 26, *, device: str = "cuda") -> None:
        try:
            import torch
        except ImportError:
            raise MissingDependencyError(
                "--device cuda needs PyTorch with CUDA: pip install 'biomask[torch]'"
            ) from None
        if device == "cuda" and not torch.cuda.is_available():
            raise BiomaskError(
                "--device cuda: no CUDA device is available here (torch.cuda.is_available() "
                "is False); run on a machine with an NVIDIA GPU or use --device cpu"
            )
        self._torch = torch
        self._device = device  # "cpu" runs the same code on the host (tests without a GPU)
        self.tile_elements = tile_elements
        #: the last two operands copied to the device, with those very arrays (held, so
        #: their memory cannot be reused by another): a held block is compared with batch
        #: after batch and is copied once, not once per batch
        self._resident: list[tuple[F32, Any]] = []

    def _on_device(self, arr: F32) -> Any:
        for host, dev in self._resident:
            if host is arr:
                return dev
        t = self._torch.from_numpy(np.ascontiguousarray(arr)).to(self._device)
        self._resident = [*self._resident[-1:], (arr, t)]
        return t

    def pairs(
        self,
        left: F32,
        right: F32,
        threshold: float,
        *,
        upper_from: int | None = None,
    ) -> PairArrays:
        torch = self._torch
        n, m = len(left), len(right)
        if n == 0 or m == 0:
            return PairArrays.empty()
        lt_all = self._on_device(left)
        rt_all = self._on_device(right)
        tr, tc = _tile_shape(n, m, left.shape[1], self.tile_elements)
        found: list[Any] = []
        for c0 in range(0, m, tc):
            c1 = min(c0 + tc, m)
            rt = rt_all[c0:c1]
            for r0 in range(0, n, tr):
                r1 = min(r0 + tr, n)
                if upper_from is not None and c1 - 1 + upper_from <= r0:
                    continue
                s = lt_all[r0:r1] @ rt.T
                idx = torch.nonzero(s >= threshold)
                if idx.shape[0] == 0:
                    continue
                sims = s[idx[:, 0], idx[:, 1]]
                gi = idx[:, 0] + r0
                gj = idx[:, 1] + c0
                if upper_from is not None:
                    keep = gj + upper_from > gi
                    gi, gj, sims = gi[keep], gj[keep], sims[keep]
                found.append((gi, gj, sims))
        if not found:
            return PairArrays.empty()
        gi = torch.cat([f[0] for f in found]).cpu().numpy().astype(np.int64)
        gj = torch.cat([f[1] for f in found]).cpu().numpy().astype(np.int64)
        sims = torch.cat([f[2] for f in found]).cpu().numpy().astype(np.float32)
        return PairArrays(gi, gj, sims)


def backend_for(device: str, tile_elements: int | None = None) -> Backend:
    """The backend for ``--device``: ``cpu`` (numpy BLAS) or ``cuda`` (torch)."""
    if device == "cpu":
        return NumpyBackend(tile_elements or DEFAULT_TILE_ELEMENTS)
    if device == "cuda":
        return TorchBackend(tile_elements or 1 << 26)
    raise BiomaskError(f"unknown device '{device}': use cpu or cuda")


def pairs_at_or_above(
    left: F32,
    right: F32,
    threshold: float,
    *,
    backend: Backend | None = None,
    upper_from: int | None = None,
) -> PairArrays:
    """Every pair of rows of two unit-norm float32 matrices with cosine >= ``threshold``.

    A convenience over :meth:`Backend.pairs` for in-memory matrices (tests, small sets).
    """
    return (backend or NumpyBackend()).pairs(left, right, threshold, upper_from=upper_from)
