"""Template sets on disk with planted matches, and a keyring, for the identity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def near(rng: np.random.Generator, v: np.ndarray, noise: float) -> np.ndarray:
    """A noisy copy of each row (the same person captured again), unit norm."""
    out = v + noise * rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.shape[1])
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def write_set(path: Path, ids: list[str], vectors: np.ndarray, **extra: pa.Array) -> Path:
    dim = vectors.shape[1]
    cols = {
        "subject_id": pa.array(ids),
        "template": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        **extra,
    }
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "identity test passphrase")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def planted(work: Path) -> dict[str, object]:
    """Sets a (600 templates of 200 ids) and b (400 of 400 ids); 3 of b's ids are a's
    people again (noisy copies), the first at a known, clearly separated similarity."""
    rng = np.random.default_rng(20)
    dim = 64
    base = unit(rng, 200, dim)
    a = np.concatenate([near(rng, base, 0.4) for _ in range(3)])
    a_ids = [f"A{i:04d}" for i in range(200)] * 3
    b = unit(rng, 400, dim)
    b[:3] = near(rng, base[:3], 0.5)
    b_ids = [f"B{i:04d}" for i in range(400)]
    write_set(work / "a.parquet", a_ids, a)
    write_set(work / "b.parquet", b_ids, b)
    return {"a": a, "b": b, "a_ids": a_ids, "b_ids": b_ids}
