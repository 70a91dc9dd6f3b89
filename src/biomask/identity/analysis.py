"""Scans over template sets: pairs at a threshold, and impostor/mated distributions.

Two sets (leakage) or one set against itself (filtering, calibration, split checks) are
compared block by block: one block of at most ``block_rows`` templates is held, the other
side streams past it batch by batch (:mod:`biomask.identity.engine` does the tiles). When
the streamed side is small enough it is held too, so it is read and decrypted once;
otherwise it is read again for every held block, which keeps memory bounded by the block
size however large the sets are (1M x 1M runs in the same memory as 100k x 100k).

Calibration (:func:`calibrate_set`) needs the *impostor* distribution, the scores of
pairs of templates of different ids, and the threshold at which a chosen false-match rate
(FMR) is reached: the smallest float32 ``t`` such that at most ``FMR x trials`` impostor
scores are ``>= t``. It is computed exactly from the largest ``FMR x trials + 1`` scores
(kept as the scan goes), not read off a histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.identity.engine import Backend, NumpyBackend
from biomask.identity.templates import Block, IdentityInputError, TemplateSet

__all__ = [
    "DEFAULT_TRIALS",
    "MIN_FALSE_MATCHES",
    "Distribution",
    "SetScores",
    "calibrate_set",
    "check_fmr",
    "kl_divergence",
    "needed_trials",
    "scan_pairs",
]

DEFAULT_TRIALS = 340_000
"""Impostor trials a calibration samples by default (the FLUXSynID protocol's count)."""

MIN_FALSE_MATCHES = 10
"""A threshold at FMR ``f`` is only trusted from at least ``10 / f`` impostor trials: then
at least 10 impostor scores lie at or above it, so the FMR estimate is not decided by one
or two pairs (its relative standard error is about 1 / sqrt(10), 32%)."""

_FINE_BINS = 4000  # histogram bins over [-1, 1] while scanning (width 0.0005)
REPORT_BINS = 200  # bins in reports and the dossier (width 0.01)
_PAIR_SCHEMA = pa.schema(
    [
        pa.field("a_id", pa.string()),
        pa.field("b_id", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("a_row", pa.int64()),
        pa.field("b_row", pa.int64()),
    ]
)


def check_fmr(fmr: float) -> None:
    """An FMR must be a rate strictly between 0 and 1."""
    if not (isinstance(fmr, float | int) and 0.0 < float(fmr) < 1.0) or math.isnan(fmr):
        raise IdentityInputError(
            f"--fmr {fmr} is outside (0, 1): a false-match rate is a fraction such as 1e-4"
        )


def needed_trials(fmr: float) -> int:
    """Impostor trials needed for a threshold at ``fmr`` (:data:`MIN_FALSE_MATCHES`)."""
    return math.ceil(MIN_FALSE_MATCHES / fmr - 1e-9)


def pair_schema(id_type_a: pa.DataType, id_type_b: pa.DataType) -> pa.Schema:
    """Schema of pair rows: ``a_id, b_id, similarity, a_row, b_row``."""
    return pa.schema(
        [
            pa.field("a_id", id_type_a),
            pa.field("b_id", id_type_b),
            pa.field("similarity", pa.float32()),
            pa.field("a_row", pa.int64()),
            pa.field("b_row", pa.int64()),
        ]
    )


@dataclass
class ScanStats:
    """What a pair scan covered."""

    pairs_scored: int = 0
    pairs_found: int = 0
    passes_over_b: int = 0


def _pairs_batch(
    left: Block, right: Block, found: Any, schema: pa.Schema, swap: bool = False
) -> pa.RecordBatch:
    li, ri = pa.array(found.left), pa.array(found.right)
    a_ids, b_ids = left.ids.take(li), right.ids.take(ri)
    a_rows, b_rows = left.rows[found.left], right.rows[found.right]
    if swap:
        a_ids, b_ids, a_rows, b_rows = b_ids, a_ids, b_rows, a_rows
    return pa.RecordBatch.from_arrays(
        [
            a_ids,
            b_ids,
            pa.array(found.similarity, pa.float32()),
            pa.array(a_rows, pa.int64()),
            pa.array(b_rows, pa.int64()),
        ],
        schema=schema,
    )


def scan_pairs(
    a: TemplateSet,
    b: TemplateSet | None,
    threshold: float,
    *,
    backend: Backend | None = None,
    block_rows: int = 65_536,
    different_ids: bool = False,
    stats: ScanStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every pair with cosine similarity ``>= threshold``, as batches of pair rows.

    Parameters
    ----------
    a, b:
        The two sets; ``b=None`` compares ``a`` with itself (each unordered pair of
        different rows once, ``a_row < b_row``).
    block_rows:
        Templates held per block: memory is about ``2 x block_rows x dim x 4`` bytes plus
        one tile, whatever the set sizes.
    different_ids:
        Leave out pairs whose two ids are equal (a person's own captures).
    """
    be = backend or NumpyBackend()
    st = stats or ScanStats()
    if b is None:
        yield from _self_pairs(a, threshold, be, block_rows, different_ids, st)
        return
    schema: pa.Schema | None = None

    def emit(left: Block, right: Block, found: Any, swap: bool) -> pa.RecordBatch | None:
        nonlocal schema
        if not len(found):
            return None
        if schema is None:
            ta, tb = (right.ids.type, left.ids.type) if swap else (left.ids.type, right.ids.type)
            schema = pair_schema(ta, tb)
        batch = _pairs_batch(left, right, found, schema, swap)
        if different_ids:
            batch = batch.filter(
                pc.not_equal(batch.column(0).cast(pa.string()), batch.column(1).cast(pa.string()))
            )
        return batch if batch.num_rows else None

    if b.hold(block_rows):
        # b fits: it is read and decrypted once; a streams past it
        st.passes_over_b = 1
        held_blocks = list(b.blocks(block_rows))
        if not held_blocks:
            return
        (held,) = held_blocks
        for left in a.batches():
            _same_dim(a, b, left, held)
            st.pairs_scored += len(left) * len(held)
            found = be.pairs(left.vectors, held.vectors, threshold)
            st.pairs_found += len(found)
            out = emit(left, held, found, False)
            if out is not None:
                yield out
        return
    for block in a.blocks(block_rows):
        st.passes_over_b += 1
        for right in b.batches():
            _same_dim(a, b, block, right)
            st.pairs_scored += len(block) * len(right)
            found = be.pairs(block.vectors, right.vectors, threshold)
            st.pairs_found += len(found)
            out = emit(block, right, found, False)
            if out is not None:
                yield out


def _same_dim(a: TemplateSet, b: TemplateSet, left: Block, right: Block) -> None:
    if left.vectors.shape[1] != right.vectors.shape[1]:
        raise IdentityInputError(
            f"templates of {a.name} have {left.vectors.shape[1]} values and those of "
            f"{b.name} {right.vectors.shape[1]}; only templates of one length (one model) "
            "can be compared"
        )


def _self_pairs(
    a: TemplateSet,
    threshold: float,
    be: Backend,
    block_rows: int,
    different_ids: bool,
    st: ScanStats,
) -> Iterator[pa.RecordBatch]:
    a.hold(block_rows)
    schema: pa.Schema | None = None
    for block in a.blocks(block_rows):
        st.passes_over_b += 1
        for right in a.blocks(block_rows) if a._cache is not None else a.batches():
            if right.first + len(right) <= block.first + 1:
                continue  # every pair here has j <= i: counted from the other side
            offset = right.first - block.first
            n_i = len(block)
            st.pairs_scored += _upper_pairs(n_i, len(right), offset)
            found = be.pairs(block.vectors, right.vectors, threshold, upper_from=offset)
            if not len(found):
                continue
            if schema is None:
                schema = pair_schema(block.ids.type, right.ids.type)
            batch = _pairs_batch(block, right, found, schema)
            if different_ids:
                same = pc.equal(batch.column(0), batch.column(1))
                batch = batch.filter(pc.invert(same))
            st.pairs_found += batch.num_rows
            if batch.num_rows:
                yield batch


def _upper_pairs(n: int, m: int, offset: int) -> int:
    """Pairs (i, j), i < n, j < m, with j + offset > i."""
    j = np.arange(m, dtype=np.int64) + offset  # i ranges over 0..min(j, n) - 1
    return int(np.clip(j, 0, n).sum())


# -- distributions -------------------------------------------------------------------------


@dataclass
class Distribution:
    """A similarity distribution: counts in fine bins over [-1, 1], moments, extremes."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(_FINE_BINS, np.int64))
    total: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, scores: np.ndarray) -> None:
        if not len(scores):
            return
        s = scores.reshape(-1)
        idx = ((s.astype(np.float64) + 1.0) * (_FINE_BINS / 2)).astype(np.int64)
        np.clip(idx, 0, _FINE_BINS - 1, out=idx)
        self.counts += np.bincount(idx, minlength=_FINE_BINS)
        self.total += len(s)
        self.sum += float(s.sum(dtype=np.float64))
        self.sumsq += float(np.square(s, dtype=np.float64).sum())
        self.lo = min(self.lo, float(s.min()))
        self.hi = max(self.hi, float(s.max()))

    def coarse(self, bins: int = REPORT_BINS) -> np.ndarray:
        out: np.ndarray = self.counts.reshape(bins, -1).sum(axis=1)
        return out

    def report(self, bins: int = REPORT_BINS) -> dict[str, Any]:
        if self.total == 0:
            return {"count": 0}
        mean = self.sum / self.total
        var = max(self.sumsq / self.total - mean * mean, 0.0)
        return {
            "count": self.total,
            "mean": round(mean, 6),
            "std": round(math.sqrt(var), 6),
            "min": round(self.lo, 6),
            "max": round(self.hi, 6),
            "histogram": {
                "lo": -1.0,
                "hi": 1.0,
                "bins": bins,
                "counts": [int(c) for c in self.coarse(bins)],
            },
        }


def kl_divergence(p: Distribution, q: Distribution, bins: int = REPORT_BINS) -> float | None:
    """KL(P || Q) in nats over ``bins`` bins of [-1, 1], each count smoothed by +0.5.

    Smoothing keeps the divergence finite where one distribution has an empty bin the
    other does not (Jeffreys' prior); None when either distribution is empty.
    """
    if p.total == 0 or q.total == 0:
        return None
    pc_ = p.coarse(bins).astype(np.float64) + 0.5
    qc = q.coarse(bins).astype(np.float64) + 0.5
    pp, qq = pc_ / pc_.sum(), qc / qc.sum()
    return round(float(np.sum(pp * np.log(pp / qq))), 6)


@dataclass
class SetScores:
    """Impostor and mated scores of one set, and its threshold at an FMR."""

    impostor: Distribution
    mated: Distribution
    trials: int
    mode: str  # "all" or "sampled"
    templates: int
    ids: int
    sampled_ids: int
    fmr: float | None = None
    threshold: float | None = None
    fmr_achieved: float | None = None
    fnmr: float | None = None
    mated_at_threshold: int | None = None
    dim: int | None = None

    def report(self) -> dict[str, Any]:
        return {
            "templates": self.templates,
            "ids": self.ids,
            "dim": self.dim,
            "trials": self.trials,
            "trials_mode": self.mode,
            "sampled_ids": self.sampled_ids,
            "fmr": self.fmr,
            "threshold": None if self.threshold is None else float(self.threshold),
            "fmr_achieved": self.fmr_achieved,
            "fnmr_at_threshold": self.fnmr,
            "impostor": self.impostor.report(),
            "mated": self.mated.report(),
        }


def _id_counts(ts: TemplateSet) -> tuple[pa.Array, np.ndarray]:
    """Distinct ids (sorted) and how many rows each has; a pass over the id column only."""
    chunks = list(ts.ids())
    if not chunks:
        raise IdentityInputError(f"{ts.name}: no rows")
    vc = pc.value_counts(pa.chunked_array(chunks).combine_chunks())
    values = vc.field("values")
    counts = vc.field("counts").to_numpy().astype(np.int64)
    order = pc.sort_indices(values).to_numpy()
    return values.take(pa.array(order)), counts[order]


def calibrate_set(
    ts: TemplateSet,
    *,
    fmr: float | None,
    trials: int | None = DEFAULT_TRIALS,
    block_rows: int = 65_536,
    seed: int = 0,
    backend: NumpyBackend | None = None,
) -> SetScores:
    """Impostor and mated distributions of a set and, with ``fmr``, its threshold.

    Parameters
    ----------
    trials:
        Impostor pairs to score. When the set has no more pairs of different ids than
        this (or ``trials`` is None), every pair is scored. Otherwise whole ids are
        sampled (a seeded permutation of the sorted distinct ids, so the same set gives
        the same sample) until their templates form at least ``trials`` impostor pairs,
        and every pair among them is scored: mated pairs of the sampled ids come with
        them, and memory is bounded by the sample, not the set.

    Raises
    ------
    IdentityInputError
        ``fmr`` outside (0, 1); fewer impostor pairs (or ``trials``) than
        :func:`needed_trials` asks for that FMR (the message says how many).
    """
    if fmr is not None:
        check_fmr(fmr)
        need = needed_trials(fmr)
        if trials is not None and trials < need:
            raise IdentityInputError(
                f"--trials {trials:,} is too few for FMR {fmr:g}: a threshold there needs at "
                f"least {need:,} impostor trials ({MIN_FALSE_MATCHES} / FMR)"
            )
    values, counts = _id_counts(ts)
    n = int(counts.sum())
    mated_pairs = int((counts * (counts - 1) // 2).sum())
    all_impostor = n * (n - 1) // 2 - mated_pairs
    if fmr is not None and all_impostor < needed_trials(fmr):
        need = needed_trials(fmr)
        # templates of distinct ids giving that many pairs: m (m - 1) / 2 >= need
        m = math.ceil((1 + math.sqrt(1 + 8 * need)) / 2)
        raise IdentityInputError(
            f"{ts.name} is too small for FMR {fmr:g}: its {n:,} templates of {len(values):,} "
            f"ids give {all_impostor:,} impostor pairs, and that FMR needs at least "
            f"{need:,} trials ({MIN_FALSE_MATCHES} / FMR; e.g. {m:,} templates of different "
            "ids); add templates or raise --fmr"
        )
    mode = "all"
    planned = all_impostor
    sampled_ids = len(values)
    target = trials
    if target is not None and fmr is not None:
        target = max(target, needed_trials(fmr))
    if target is not None and all_impostor > target:
        mode = "sampled"
        perm = np.random.default_rng(seed).permutation(len(values))
        c = counts[perm]
        rows = np.cumsum(c)
        imp = rows * (rows - 1) // 2 - np.cumsum(c * (c - 1) // 2)
        k = int(np.searchsorted(imp, target, side="left")) + 1
        sampled_ids = k
        planned = int(imp[k - 1])
        ts.keep_ids = values.take(pa.array(np.sort(perm[:k])))
    try:
        scores = _scan_scores(ts, values, fmr, planned, block_rows, backend or NumpyBackend())
    finally:
        ts.keep_ids = None
        ts.release()  # a held sample is not the set
    scores.mode = mode
    scores.ids = len(values)
    scores.sampled_ids = sampled_ids
    scores.templates = n
    if fmr is not None and scores.trials < needed_trials(fmr):
        raise IdentityInputError(
            f"{ts.name}: only {scores.trials:,} impostor pairs had usable templates; FMR "
            f"{fmr:g} needs at least {needed_trials(fmr):,} ({MIN_FALSE_MATCHES} / FMR)"
        )
    return scores


def _scan_scores(
    ts: TemplateSet,
    values: pa.Array,
    fmr: float | None,
    planned: int,
    block_rows: int,
    be: NumpyBackend,
) -> SetScores:
    """One scan of the set's pairs (i < j): impostor and mated scores, the largest
    impostor scores. ``planned`` (the pairs the id counts promise; rows without a usable
    template only lower it) sizes how many of the largest scores are kept: exactly the
    ``FMR x planned + 1`` the threshold can need."""
    imp, mated = Distribution(), Distribution()
    mated_scores: list[np.ndarray] = []
    top = np.zeros(0, np.float32)
    floor = -np.inf
    keep = math.floor((fmr or 0.0) * planned) + 1  # largest impostor scores kept
    held = ts.hold(block_rows)

    def codes(block: Block) -> np.ndarray:
        out: np.ndarray = pc.index_in(block.ids, value_set=values).to_numpy(zero_copy_only=False)
        return out

    blocks = list(ts.blocks(block_rows)) if held else None
    for left in blocks if blocks is not None else ts.blocks(block_rows):
        lc = codes(left)
        rights = blocks if blocks is not None else ts.batches()
        for right in rights:
            if right.first + len(right) <= left.first + 1:
                continue
            rc = codes(right)
            offset = right.first - left.first
            for r0, c0, s in be.tiles(left.vectors, right.vectors, upper_from=offset):
                nr, nc = s.shape
                ii = np.arange(r0, r0 + nr)[:, None]
                jj = np.arange(c0, c0 + nc)[None, :] + offset
                if c0 + nc - 1 + offset <= r0:
                    continue
                whole = c0 + offset > r0 + nr - 1  # every pair of the tile is above
                valid = None if whole else (jj > ii)
                same = lc[r0 : r0 + nr, None] == rc[None, c0 : c0 + nc]
                m_mask = same if valid is None else (same & valid)
                if m_mask.any():
                    ms = s[m_mask]
                    mated.add(ms)
                    mated_scores.append(ms.copy())
                i_mask = ~same if valid is None else (~same & valid)
                sc = s[i_mask] if not (valid is None and not same.any()) else s.reshape(-1)
                imp.add(sc)
                if fmr is not None:
                    # candidates for the largest scores: only those above the current floor
                    cand = sc[sc > floor] if np.isfinite(floor) else sc
                    top = np.concatenate([top, cand.astype(np.float32, copy=False)])
                    if len(top) > 4 * keep:  # trim now and then, not on every tile
                        top = np.partition(top, len(top) - keep)[len(top) - keep :]
                        floor = float(top.min())
    out = SetScores(
        impostor=imp,
        mated=mated,
        trials=imp.total,
        mode="all",
        templates=0,
        ids=0,
        sampled_ids=0,
        dim=ts.dim,
    )
    if fmr is not None and imp.total:
        if len(top) > keep:
            top = np.partition(top, len(top) - keep)[len(top) - keep :]
        k = math.floor(fmr * imp.total)
        desc = np.sort(top)[::-1]
        if k < len(desc):
            thr = np.nextafter(np.float32(desc[k]), np.float32(np.inf))
        else:  # pragma: no cover - top always holds more than k scores
            thr = np.float32(desc[-1])
        out.fmr = fmr
        out.threshold = float(thr)
        out.fmr_achieved = float((desc >= thr).sum()) / imp.total
        if mated_scores:
            allm = np.concatenate(mated_scores)
            out.mated_at_threshold = int((allm >= thr).sum())
            out.fnmr = round(1.0 - out.mated_at_threshold / len(allm), 6)
    return out
