"""Calibration: the FMR threshold is exact on the impostor scores; trials are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biomask.identity.analysis import (
    Distribution,
    calibrate_set,
    kl_divergence,
    needed_trials,
)
from biomask.identity.templates import IdentityInputError, TemplateSet
from tests.identity.conftest import near, unit, write_set


def impostor_scores(v: np.ndarray, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    s = v @ v.T
    iu = np.triu_indices(len(v), 1)
    arr = np.array(ids)
    same = arr[iu[0]] == arr[iu[1]]
    return s[iu][~same], s[iu][same]


def test_threshold_meets_the_fmr_exactly_over_all_pairs(work: Path, planted: dict) -> None:
    ts = TemplateSet("a.parquet", "subject_id", "template", batch_size=128)
    sc = calibrate_set(ts, fmr=1e-3, trials=None, block_rows=256)
    imp, mated = impostor_scores(planted["a"], planted["a_ids"])
    assert sc.mode == "all" and sc.trials == len(imp)
    k = int(np.floor(1e-3 * len(imp)))
    thr = np.float32(sc.threshold)
    assert (imp >= thr).sum() <= k  # at most the FMR ...
    assert (imp >= thr - 1e-6).sum() > k  # ... and no higher than it must be
    assert sc.fmr_achieved == pytest.approx((imp >= thr).sum() / len(imp), abs=1e-6)
    assert sc.mated.total == len(mated) == 600  # 200 ids x 3 captures: 3 pairs each
    assert sc.mated.sum / sc.mated.total == pytest.approx(float(mated.mean()), abs=1e-4)
    assert sc.fnmr == pytest.approx(float((mated < thr).mean()), abs=1e-6)


def test_sampled_calibration_is_deterministic_and_big_enough(work: Path, planted: dict) -> None:
    runs = [
        calibrate_set(TemplateSet("a.parquet", "subject_id", "template"), fmr=1e-2, trials=5000)
        for _ in range(2)
    ]
    assert runs[0].mode == "sampled" and runs[0].trials >= 5000
    assert runs[0].threshold == runs[1].threshold and runs[0].trials == runs[1].trials
    assert runs[0].sampled_ids < 200


def test_fmr_outside_zero_one_is_refused(work: Path, planted: dict) -> None:
    ts = TemplateSet("a.parquet", "subject_id", "template")
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(IdentityInputError, match=r"--fmr .* is outside \(0, 1\)"):
            calibrate_set(ts, fmr=bad)


def test_reference_too_small_says_how_many_trials_it_needs(work: Path) -> None:
    rng = np.random.default_rng(3)
    write_set(work / "small.parquet", [f"S{i}" for i in range(100)], unit(rng, 100, 8))
    ts = TemplateSet("small.parquet", "subject_id", "template", label="reference")
    with pytest.raises(IdentityInputError) as err:
        calibrate_set(ts, fmr=1e-4)
    msg = str(err.value)
    assert "reference small.parquet is too small for FMR 0.0001" in msg
    assert "4,950 impostor pairs" in msg and "at least 100,000 trials" in msg
    assert needed_trials(1e-4) == 100_000
    with pytest.raises(IdentityInputError, match=r"--trials 1,000 is too few for FMR 0.001"):
        calibrate_set(ts, fmr=1e-3, trials=1000)


def test_kl_divergence_is_zero_for_equal_and_grows_with_shift() -> None:
    rng = np.random.default_rng(4)
    p, q, r = Distribution(), Distribution(), Distribution()
    p.add(rng.normal(0, 0.05, 20000).astype(np.float32))
    q.add(rng.normal(0, 0.05, 20000).astype(np.float32))
    r.add(rng.normal(0.2, 0.05, 20000).astype(np.float32))
    same, shifted = kl_divergence(p, q), kl_divergence(p, r)
    assert same is not None and shifted is not None
    assert same < 0.01 < 1.0 < shifted
    assert kl_divergence(p, Distribution()) is None


def test_mated_distribution_from_a_set_with_several_templates_per_id(work: Path) -> None:
    rng = np.random.default_rng(5)
    base = unit(rng, 400, 32)
    v = np.concatenate([base, near(rng, base, 0.3)])
    write_set(work / "m.parquet", [f"M{i}" for i in range(400)] * 2, v)
    sc = calibrate_set(TemplateSet("m.parquet", "subject_id", "template"), fmr=1e-3, trials=None)
    assert sc.mated.total == 400
    assert sc.mated.lo > 0.8 and sc.impostor.hi < 0.8 and sc.fnmr == 0.0
