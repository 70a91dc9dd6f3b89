"""The identity commands: calibrate, leakage, filter, split (library entry points).

Each function is one recorded run (see :mod:`biomask.identity.runs`) and returns its
report, the same dict that is written as JSON and shown in the dossier. The command line
(:mod:`biomask.identity.cli`) only parses arguments and prints.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.connectors import (
    DatasetRef,
    Sink,
    Source,
    detect_format,
    display_uri,
    open_sink,
    open_source,
    open_tables,
    table_sink_uri,
)
from biomask.identity.analysis import (
    DEFAULT_TRIALS,
    SetScores,
    calibrate_set,
    check_fmr,
    kl_divergence,
    needed_trials,
    pair_schema,
    scan_pairs,
)
from biomask.identity.engine import backend_for
from biomask.identity.runs import IdentityRun, file_ref, write_report
from biomask.identity.templates import IdentityInputError, TemplateSet
from biomask.keys import Keyring
from biomask.policies import Policy

__all__ = [
    "REASON_COLUMN",
    "Common",
    "quasi_identifier_shift",
    "removed_uri",
    "run_calibrate",
    "run_filter",
    "run_leakage",
    "run_split",
]

REASON_COLUMN = "removed_reason"
"""Column added to the ``.removed`` output of ``identity filter``: why each row left."""

_MAX_CATEGORIES = 40


@dataclass
class Common:
    """Options every identity command shares."""

    id_column: str
    template_column: str = "template"
    policy: Policy | None = None
    keyring: Keyring | None = None
    table: str | None = None
    keystore: str | None = None
    lineage_dir: Path | None = None
    report: Path | None = None
    device: str = "cpu"
    block_rows: int = 65_536
    batch_size: int = 65_536
    overwrite: bool = False
    #: a receipt of the lineage directory from an earlier run: refuse a rolled-back one
    receipt: str | None = None
    notes: list[str] = field(default_factory=list)
    _signer: Keyring | None = None

    def ring(self) -> Keyring:
        """The keyring that signs the run; a throw-away one when none was given (it is
        never used to decrypt: encrypted templates still need ``--keyring``)."""
        if self.keyring is not None:
            return self.keyring
        if self._signer is None:
            self._signer = Keyring.ephemeral()
            self.notes.append(
                "lineage signed with a throw-away key (no --keyring): it verifies only with "
                "the key the directory itself holds"
            )
        return self._signer

    def open(self, uri: str, label: str, table: str | None = None) -> TemplateSet:
        ts = TemplateSet(
            uri,
            self.id_column,
            self.template_column,
            label=label,
            policy=self.policy,
            keyring=self.keyring,
            table=table or self.table,
            keystore=self.keystore,
            batch_size=self.batch_size,
        )
        ts._check_columns(ts.source.schema)
        return ts

    def job(self, fallback: str) -> str:
        return self.policy.dataset if self.policy is not None else fallback


def _lineage_dir(opts: Common, beside: str | Path) -> Path:
    if opts.lineage_dir is not None:
        return opts.lineage_dir
    p = Path(str(beside).rstrip("/"))
    return p.with_name(p.name + ".lineage")


def _check_threshold(threshold: float) -> float:
    if not (-1.0 <= threshold <= 1.0) or math.isnan(threshold):
        raise IdentityInputError(
            f"--threshold {threshold} is not a cosine similarity: it must lie in [-1, 1]"
        )
    return float(np.float32(threshold))


def _check_threshold_args(threshold: float | None, fmr: float | None, has_reference: bool) -> None:
    """Argument errors, found before a run starts (a refused run writes no lineage)."""
    if threshold is not None and fmr is not None:
        raise IdentityInputError("give --threshold or --fmr, not both")
    if threshold is not None:
        _check_threshold(threshold)
        return
    if fmr is None:
        raise IdentityInputError("give --threshold X, or --fmr F with a --reference set")
    check_fmr(fmr)
    if not has_reference:
        raise IdentityInputError(
            "--fmr needs a --reference set: the threshold comes from its impostor scores"
        )


def _resolve_threshold(
    opts: Common,
    *,
    threshold: float | None,
    fmr: float | None,
    reference: TemplateSet | None,
    trials: int | None,
) -> tuple[float, dict[str, Any]]:
    """The threshold given, or the one calibrated at ``fmr`` on ``reference``."""
    if threshold is not None and fmr is not None:
        raise IdentityInputError("give --threshold or --fmr, not both")
    if threshold is not None:
        return _check_threshold(threshold), {"source": "given", "threshold": threshold}
    if fmr is None:
        raise IdentityInputError("give --threshold X, or --fmr F with a --reference set")
    check_fmr(fmr)
    if reference is None:
        raise IdentityInputError(
            "--fmr needs a --reference set: the threshold comes from its impostor scores"
        )
    scores = calibrate_set(
        reference, fmr=fmr, trials=default_trials(trials, fmr), block_rows=opts.block_rows
    )
    assert scores.threshold is not None
    return scores.threshold, {"source": "calibrated", **scores.report()}


def default_trials(trials: int | None, fmr: float | None) -> int:
    """``--trials``, or by default 340,000 or the 10 / FMR a threshold needs if more."""
    if trials is not None:
        return trials
    return max(DEFAULT_TRIALS, needed_trials(fmr) if fmr is not None else 0)


def _refs(*sets: TemplateSet | None) -> list[DatasetRef]:
    out: list[DatasetRef] = []
    seen: set[str] = set()
    for s in sets:
        if s is None:
            continue
        ref = s.ref()
        if ref.name not in seen:
            seen.add(ref.name)
            out.append(ref)
    return out


def _set_summary(ts: TemplateSet) -> dict[str, Any]:
    return {
        "uri": display_uri(ts.uri),
        "table": ts.table,
        "rows": ts.rows_read,
        "templates_compared": ts.rows_used,
        "skipped": dict(sorted(ts.skipped.items())),
        "dim": ts.dim,
    }


# -- calibrate -----------------------------------------------------------------------------


def run_calibrate(
    opts: Common,
    input_uri: str,
    *,
    fmr: float,
    trials: int | None = None,
    reference_uri: str | None = None,
) -> dict[str, Any]:
    """Impostor and mated distributions of a set and its threshold at ``fmr``.

    With ``reference_uri``, the reference set's distributions too, and the KL divergence
    of the input's mated and impostor distributions from the reference's (how far a set,
    e.g. a synthetic one, is from real data: FLUXSynID's realism measure).
    """
    check_fmr(fmr)
    ring = opts.ring()
    ts = opts.open(input_uri, "input")
    ref = opts.open(reference_uri, "reference") if reference_uri else None
    report_path = opts.report or Path("identity-calibrate.json")
    run = IdentityRun(
        "identity.calibrate",
        lineage_dir=_lineage_dir(opts, report_path),
        keyring=ring,
        job=opts.job(Path(input_uri).stem),
        inputs=_refs(ts, ref),
        policy=opts.policy,
        receipt=opts.receipt,
    )
    run.start()
    try:
        scores = calibrate_set(
            ts, fmr=fmr, trials=default_trials(trials, fmr), block_rows=opts.block_rows
        )
        report: dict[str, Any] = {
            "command": "identity calibrate",
            "fmr": fmr,
            "threshold": scores.threshold,
            "input": {**_set_summary(ts), **scores.report()},
        }
        if ref is not None:
            rscores = calibrate_set(
                ref, fmr=None, trials=default_trials(trials, fmr), block_rows=opts.block_rows
            )
            report["reference"] = {**_set_summary(ref), **rscores.report()}
            report["realism"] = _realism(scores, rscores)
        report["notes"] = opts.notes
        write_report(report_path, report)
        run.complete(
            report,
            rows_in=ts.rows_read + (ref.rows_read if ref else 0),
            rows_out=ts.rows_read + (ref.rows_read if ref else 0),
            outputs=[file_ref(report_path)],
        )
    except BaseException as exc:
        run.fail(exc)
        raise
    report["lineage"] = str(run.lineage_dir)
    report["receipt"] = run.receipt
    report["report"] = str(report_path)
    return report


def _realism(s: SetScores, r: SetScores) -> dict[str, Any]:
    return {
        "kl_impostor": kl_divergence(s.impostor, r.impostor),
        "kl_mated": kl_divergence(s.mated, r.mated),
        "note": "KL(input || reference) in nats over 200 bins of [-1, 1], counts +0.5",
    }


# -- leakage -------------------------------------------------------------------------------


def run_leakage(
    opts: Common,
    a_uri: str,
    b_uri: str,
    *,
    threshold: float | None = None,
    fmr: float | None = None,
    reference_uri: str | None = None,
    trials: int | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Every (a, b) pair of templates with cosine similarity >= the threshold, exactly."""
    _check_threshold_args(threshold, fmr, reference_uri is not None)
    ring = opts.ring()
    a = opts.open(a_uri, "a")
    b = opts.open(b_uri, "b")
    ref = opts.open(reference_uri, "reference") if reference_uri else None
    report_path = opts.report or Path("identity-leakage.json")
    run = IdentityRun(
        "identity.leakage",
        lineage_dir=_lineage_dir(opts, output or report_path),
        keyring=ring,
        job=opts.job(Path(a_uri).stem),
        inputs=_refs(a, b, ref),
        policy=opts.policy,
        receipt=opts.receipt,
    )
    run.start()
    sink: Sink | None = None
    try:
        thr, how = _resolve_threshold(
            opts, threshold=threshold, fmr=fmr, reference=ref, trials=trials
        )
        schema = pair_schema(
            a.source.schema.field(opts.id_column).type, b.source.schema.field(opts.id_column).type
        )
        if output is not None:
            sink = open_sink(output, schema, overwrite=opts.overwrite)
        backend = backend_for(opts.device)
        n_pairs = 0
        a_hit: list[pa.Array] = []
        b_hit: list[pa.Array] = []
        best = -math.inf
        for batch in scan_pairs(a, b, thr, backend=backend, block_rows=opts.block_rows):
            batch = _cast(batch, schema)
            n_pairs += batch.num_rows
            a_hit.append(pc.unique(batch.column(0)))
            b_hit.append(pc.unique(batch.column(1)))
            best = max(best, float(pc.max(batch.column(2)).as_py()))
            if sink is not None:
                sink.write(batch)
        if sink is not None:
            sink.commit()
        report = {
            "command": "identity leakage",
            "threshold": thr,
            "threshold_from": how,
            "fmr": fmr,
            "device": opts.device,
            "a": {**_set_summary(a), "ids_matched": _distinct(a_hit)},
            "b": {**_set_summary(b), "ids_matched": _distinct(b_hit)},
            "pairs": n_pairs,
            "max_similarity_found": None if n_pairs == 0 else round(best, 6),
            "pairs_output": display_uri(output) if output else None,
            "notes": opts.notes,
        }
        write_report(report_path, report)
        outputs = [file_ref(report_path)]
        if sink is not None:
            outputs.insert(0, sink.ref())
        rows = a.rows_read + b.rows_read
        run.complete(report, rows_in=rows, rows_out=rows, outputs=outputs)
    except BaseException as exc:
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.abort()
        run.fail(exc)
        raise
    report["lineage"] = str(run.lineage_dir)
    report["receipt"] = run.receipt
    report["report"] = str(report_path)
    return report


def _cast(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    return pa.RecordBatch.from_arrays(
        [c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)], schema=schema
    )


def _distinct(chunks: list[pa.Array]) -> int:
    if not chunks:
        return 0
    return len(pc.unique(pa.chunked_array(chunks).combine_chunks()))


# -- tables of an export -------------------------------------------------------------------


def _tables(opts: Common, input_uri: str, ts: TemplateSet) -> dict[str, Source]:
    """Every table of the input: a multi-table export's tables, or the one file."""
    if opts.policy is not None and opts.policy.is_multi_table and Path(input_uri).is_dir():
        names = list(opts.policy.table_specs())
        return open_tables(input_uri, names, batch_size=opts.batch_size)
    name = ts.table or (opts.policy.dataset if opts.policy is not None else "input")
    return {name: open_source(input_uri, batch_size=opts.batch_size)}


def _qi_columns(opts: Common, table: str, schema: pa.Schema) -> list[str]:
    if opts.policy is None:
        return []
    specs = opts.policy.table_specs()
    spec = specs.get(table) or (next(iter(specs.values())) if len(specs) == 1 else None)
    if spec is None:
        return []
    return [c for c, rule in spec.columns.items() if rule.quasi_identifier and c in schema.names]


def _count_values(acc: dict[str, int], values: pa.Array) -> None:
    if pa.types.is_floating(values.type):
        values = pc.round(values, 1)
    for item in pc.value_counts(values).to_pylist():
        v = item["values"]
        key = "(missing)" if v is None else str(v)
        acc[key] = acc.get(key, 0) + int(item["counts"])


def quasi_identifier_shift(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """Before/after counts of one quasi-identifier and each category's shift in points.

    The format is the dossier's bias-examination format (``before``, ``after``, totals,
    ``shift_pp``, ``max_abs_shift_pp``), so the dossier draws it the same way.
    """
    bt, at = sum(before.values()), sum(after.values())
    cats = sorted(set(before) | set(after), key=lambda c: -before.get(c, 0))
    if len(cats) > _MAX_CATEGORIES:
        keep = set(cats[: _MAX_CATEGORIES - 1])
        before = _fold(before, keep)
        after = _fold(after, keep)
        cats = sorted(set(before) | set(after), key=lambda c: -before.get(c, 0))
    shift = {
        c: round((after.get(c, 0) / max(at, 1) - before.get(c, 0) / max(bt, 1)) * 100, 3)
        for c in cats
    }
    return {
        "before": {c: before.get(c, 0) for c in sorted(cats)},
        "after": {c: after.get(c, 0) for c in sorted(cats)},
        "before_total": bt,
        "after_total": at,
        "shift_pp": dict(sorted(shift.items())),
        "max_abs_shift_pp": max((abs(v) for v in shift.values()), default=0.0),
    }


def _fold(counts: dict[str, int], keep: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in counts.items():
        key = k if k in keep else "(other)"
        out[key] = out.get(key, 0) + v
    return out


def removed_uri(output_uri: str) -> str:
    """Where ``identity filter`` puts removed rows: ``<output>.removed``, same format."""
    p = Path(output_uri.rstrip("/"))
    if detect_format(p) is not None and not p.is_dir():
        return str(p.with_name(f"{p.stem}.removed{p.suffix}"))
    return str(p.with_name(p.name + ".removed")) + ("/" if output_uri.endswith("/") else "")


def _meta(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


# -- filter --------------------------------------------------------------------------------


def greedy_keep(edges: pa.Table) -> tuple[list[Any], dict[Any, tuple[Any, float]]]:
    """Which ids to remove so that no two kept ids match, and why.

    ``edges``: columns ``a``, ``b`` (ids, a != b) and ``similarity`` (their best pair).
    Ids are visited in a fixed order, fewest matching ids first, ties broken by the id's
    text (then its value); an id is kept unless it matches an id already kept, else it is
    removed as a near-duplicate of the kept id it matches best. Visiting low-degree ids
    first keeps more identities than visiting in id order (a hub that matches many is
    removed rather than all of them). Only ids with at least one match are visited; the
    loop is per matching id, never per row.

    Returns
    -------
    removed, reasons:
        Removed ids in visiting order; per removed id, the kept id and the similarity.
    """
    a = edges.column("a").to_pylist()
    b = edges.column("b").to_pylist()
    s = edges.column("similarity").to_pylist()
    nbrs: dict[Any, dict[Any, float]] = {}
    for x, y, v in zip(a, b, s, strict=True):
        nbrs.setdefault(x, {})[y] = max(v, nbrs.get(x, {}).get(y, -2.0))
        nbrs.setdefault(y, {})[x] = max(v, nbrs.get(y, {}).get(x, -2.0))
    order = sorted(nbrs, key=lambda i: (len(nbrs[i]), str(i), repr(i)))
    kept: set[Any] = set()
    removed: list[Any] = []
    reasons: dict[Any, tuple[Any, float]] = {}
    for i in order:
        hits = [(v, str(j), j) for j, v in nbrs[i].items() if j in kept]
        if not hits:
            kept.add(i)
            continue
        v, _, j = max(hits, key=lambda h: (h[0], h[1]))
        removed.append(i)
        reasons[i] = (j, v)
    return removed, reasons


def run_filter(
    opts: Common,
    input_uri: str,
    output_uri: str,
    *,
    threshold: float | None = None,
    fmr: float | None = None,
    reference_uri: str | None = None,
    trials: int | None = None,
) -> dict[str, Any]:
    """Remove near-duplicate identities: no two kept ids have a pair >= the threshold.

    The threshold is given, or calibrated at ``fmr`` on ``reference_uri`` (default: the
    input itself). Every row of a removed id, in every table of the export, moves to the
    ``.removed`` output with its reason; nothing is dropped. Quasi-identifier
    distributions before and after go to the report and the dossier.
    """
    _check_threshold_args(threshold, fmr, True)  # the input is the default reference
    ring = opts.ring()
    ts = opts.open(input_uri, "input")
    ref = opts.open(reference_uri, "reference") if reference_uri else None
    tables = _tables(opts, input_uri, ts)
    ent = opts.id_column
    for t, src in tables.items():
        if ent not in src.schema.names:
            raise IdentityInputError(
                f"table '{t}' of {display_uri(input_uri)} has no column '{ent}': filtering "
                "removes a person from every table, so each table must name its person"
            )
    report_path = opts.report or Path(str(output_uri).rstrip("/") + ".identity.json")
    inputs = [s.ref() for s in tables.values()] + _refs(ref)
    run = IdentityRun(
        "identity.filter",
        lineage_dir=_lineage_dir(opts, output_uri),
        keyring=ring,
        job=opts.job(Path(input_uri).stem),
        inputs=inputs,
        policy=opts.policy,
        receipt=opts.receipt,
    )
    run.start()
    sinks: list[Sink] = []
    try:
        if threshold is None and fmr is not None and ref is None:
            ref = ts  # calibrate on the input itself
        thr, how = _resolve_threshold(
            opts, threshold=threshold, fmr=fmr, reference=ref, trials=trials
        )
        backend = backend_for(opts.device)
        edge_parts = []
        for batch in scan_pairs(
            ts, None, thr, backend=backend, block_rows=opts.block_rows, different_ids=True
        ):
            x, y = batch.column(0), batch.column(1)
            first = pc.less(x, y)  # one orientation per id pair: (smaller, larger)
            edge_parts.append(
                pa.RecordBatch.from_arrays(
                    [pc.if_else(first, x, y), pc.if_else(first, y, x), batch.column(2)],
                    names=["a", "b", "similarity"],
                )
            )
        if edge_parts:
            edges = (
                pa.Table.from_batches(edge_parts)
                .group_by(["a", "b"])
                .aggregate([("similarity", "max")])
                .rename_columns(["a", "b", "similarity"])
            )
        else:
            edges = pa.table({"a": [], "b": [], "similarity": pa.array([], pa.float32())})
        removed, why = greedy_keep(edges)
        id_type = ts.source.schema.field(ent).type
        removed_arr = pa.array(removed, id_type) if removed else pa.array([], id_type)
        texts = [
            f"near-duplicate of {why[i][0]} (cosine {why[i][1]:.4f} >= threshold {thr:.4f}"
            + (f", FMR {fmr:g})" if fmr is not None else ")")
            for i in removed
        ]
        reason_arr = pa.array(texts, pa.string())
        rows_in = rows_kept = rows_removed = 0
        dists: dict[str, Any] = {}
        out_refs: list[DatasetRef] = []
        rem_refs: list[DatasetRef] = []
        multi = len(tables) > 1 or (opts.policy is not None and opts.policy.is_multi_table)
        rem_root = removed_uri(output_uri)
        for t, src in tables.items():
            out_uri = table_sink_uri(output_uri, t, input_uri) if multi else output_uri
            rem_uri = table_sink_uri(rem_root, t, input_uri) if multi else rem_root
            meta = _meta(src.schema)
            keep_sink = open_sink(out_uri, src.schema, overwrite=opts.overwrite, metadata=meta)
            sinks.append(keep_sink)
            rem_schema = src.schema.append(pa.field(REASON_COLUMN, pa.string()))
            rem_sink = open_sink(rem_uri, rem_schema, overwrite=opts.overwrite, metadata=meta)
            sinks.append(rem_sink)
            qis = _qi_columns(opts, t, src.schema)
            before: dict[str, dict[str, int]] = {c: {} for c in qis}
            after: dict[str, dict[str, int]] = {c: {} for c in qis}
            for batch in src.batches():
                batch = batch.select(src.schema.names)
                rows_in += batch.num_rows
                idx = pc.index_in(batch.column(ent), value_set=removed_arr)
                gone = pc.is_valid(idx)
                kept = batch.filter(pc.invert(gone))
                out = batch.filter(gone)
                for c in qis:
                    _count_values(before[c], batch.column(c))
                    _count_values(after[c], kept.column(c))
                if kept.num_rows:
                    keep_sink.write(kept)
                rows_kept += kept.num_rows
                if out.num_rows:
                    reasons = reason_arr.take(pc.drop_null(pc.filter(idx, gone)))
                    rem_sink.write(
                        pa.RecordBatch.from_arrays([*out.columns, reasons], schema=rem_schema)
                    )
                rows_removed += out.num_rows
            for c in qis:
                dists[f"{t}.{c}"] = quasi_identifier_shift(before[c], after[c])
        for s in sinks:
            s.commit()
        out_refs = [s.ref() for s in sinks[0::2]]
        rem_refs = [s.ref() for s in sinks[1::2]]
        n_ids = _count_ids(ts)
        report = {
            "command": "identity filter",
            "threshold": thr,
            "threshold_from": how,
            "fmr": fmr,
            "device": opts.device,
            "input": _set_summary(ts),
            "greedy_order": "ids with the fewest matching ids first, ties by id; an id is "
            "kept unless it matches an id already kept",
            "ids_before": n_ids,
            "ids_matching_another": len(
                {*edges.column("a").to_pylist(), *edges.column("b").to_pylist()}
            ),
            "matching_id_pairs": edges.num_rows,
            "ids_removed": len(removed),
            "ids_after": n_ids - len(removed),
            "retained_id_fraction": round((n_ids - len(removed)) / max(n_ids, 1), 6),
            "rows_in": rows_in,
            "rows_kept": rows_kept,
            "rows_removed": rows_removed,
            "retained_row_fraction": round(rows_kept / max(rows_in, 1), 6),
            "output": display_uri(output_uri),
            "removed_output": display_uri(rem_root),
            "quasi_identifiers": dists,
            "notes": opts.notes,
        }
        write_report(report_path, report)
        reason_key = f"near-duplicate identity (cosine >= {thr:.4f})"
        run.complete(
            report,
            rows_in=rows_in,
            rows_out=rows_kept,
            rows_set_aside=rows_removed,
            reasons={reason_key: rows_removed} if rows_removed else {},
            outputs=[*out_refs, file_ref(report_path)],
            set_aside=rem_refs,
        )
    except BaseException as exc:
        for s in sinks:
            with contextlib.suppress(Exception):
                s.abort()
        run.fail(exc)
        raise
    report["lineage"] = str(run.lineage_dir)
    report["receipt"] = run.receipt
    report["report"] = str(report_path)
    return report


def _count_ids(ts: TemplateSet) -> int:
    chunks = list(ts.ids())
    if not chunks:
        return 0
    return len(pc.unique(pa.chunked_array(chunks).combine_chunks()))


# -- split ---------------------------------------------------------------------------------


def _parse_ratios(ratios: Sequence[float], names: Sequence[str]) -> np.ndarray:
    r = np.asarray(list(ratios), dtype=np.float64)
    if len(r) < 2 or (r <= 0).any() or not np.isfinite(r).all():
        raise IdentityInputError(
            f"--ratios {','.join(str(x) for x in ratios)}: give two or more positive fractions"
        )
    if abs(r.sum() - 1.0) > 1e-6:
        raise IdentityInputError(
            f"--ratios {','.join(str(x) for x in ratios)} sum to {r.sum():g}, not 1"
        )
    if len(names) != len(r):
        raise IdentityInputError(
            f"{len(r)} ratios but {len(names)} split names ({','.join(names)})"
        )
    return r


def split_assignment(
    tokens: pa.Array, keyring: Keyring, entity: str, ratios: np.ndarray
) -> np.ndarray:
    """Split index per distinct token: keyed-hash rank cut at the ratios.

    Each token's 64-bit keyed hash (the keyring's PRF under ``split/<entity>``) orders the
    subjects; the first ``round(r1 x n)`` go to the first split, and so on. Same keyring,
    same subjects: same split. Ratios hold to one subject.
    """
    from biomask.keys.primitives import DeterministicPrf

    prf = DeterministicPrf(keyring.derive("split", entity))
    tok = tokens.cast(pa.string()) if not pa.types.is_string(tokens.type) else tokens
    seeds = prf.seeds(tok.cast(pa.binary()))
    h = seeds[:, :8].copy().view(">u8").reshape(-1).astype(np.uint64)
    order = np.argsort(h, kind="stable")
    n = len(order)
    bounds = np.rint(np.cumsum(ratios) * n).astype(np.int64)
    bounds[-1] = n
    rank_split = np.searchsorted(bounds, np.arange(n), side="right")
    out = np.empty(n, dtype=np.int64)
    out[order] = rank_split
    return out


def run_split(
    opts: Common,
    input_uri: str,
    output_uri: str,
    *,
    by: str,
    ratios: Sequence[float],
    names: Sequence[str] = ("train", "val", "test"),
    leakage_threshold: float | None = None,
    merge_leaks: bool = False,
) -> dict[str, Any]:
    """Subject-disjoint splits of an export; each row follows its subject.

    With ``leakage_threshold``, templates of different subjects in different splits are
    compared (one self-join of the template table, pairs across splits kept): a pair at
    or above the threshold is one person under two ids, split apart. Found pairs go to
    ``<output>.leaks.parquet``; with ``merge_leaks`` each group of linked subjects moves
    into the first split (in ``names`` order) that holds one of them, so an evaluation set
    gives up the duplicate rather than the training set keeping it.
    """
    policy = opts.policy
    if policy is None:
        raise IdentityInputError("split needs --policy: it names the entity and the tables")
    if opts.keyring is None:
        raise IdentityInputError(
            "split needs --keyring: subjects are split by a keyed hash of their token "
            "(same keyring, same split)"
        )
    if by not in policy.entities:
        have = ", ".join(sorted(policy.entities)) or "none"
        raise IdentityInputError(f"--by {by}: the policy declares no entity '{by}' (has: {have})")
    r = _parse_ratios(ratios, names)
    if merge_leaks and leakage_threshold is None:
        raise IdentityInputError("--merge-leaks needs --leakage-threshold")
    ent_col = policy.entities[by].column
    opts.id_column = ent_col
    ring = opts.keyring
    if policy.is_multi_table:
        tables = open_tables(input_uri, list(policy.table_specs()), batch_size=opts.batch_size)
    else:
        tables = {policy.dataset: open_source(input_uri, batch_size=opts.batch_size)}
    for t, src in tables.items():
        if ent_col not in src.schema.names:
            raise IdentityInputError(
                f"table '{t}' of {display_uri(input_uri)} has no column '{ent_col}' of entity "
                f"'{by}': every table must name its subject to follow it into a split"
            )
    ts: TemplateSet | None = None
    if leakage_threshold is not None:
        _check_threshold(leakage_threshold)
        ts = opts.open(input_uri, "input")
    run = IdentityRun(
        "split",
        lineage_dir=_lineage_dir(opts, output_uri),
        keyring=ring,
        job=policy.dataset,
        inputs=[s.ref() for s in tables.values()],
        policy=policy,
        receipt=opts.receipt,
    )
    report_path = opts.report or Path(str(output_uri).rstrip("/") + ".split.json")
    run.start()
    sinks: list[Sink] = []
    try:
        # every subject any table names, once: the split is decided per subject
        seen: list[pa.Array] = []
        for t, src in tables.items():
            reader = getattr(src, "column_batches", None)
            it: Iterable[pa.RecordBatch] = reader([ent_col]) if callable(reader) else src.batches()
            for batch in it:
                col = batch.column(ent_col)
                if col.null_count:
                    raise IdentityInputError(
                        f"table '{t}': {col.null_count} rows have no '{ent_col}'; every row "
                        "must name its subject to follow it into a split"
                    )
                seen.append(pc.unique(col))
        subjects = pc.unique(pa.chunked_array(seen).combine_chunks()) if seen else pa.array([])
        subjects = subjects.take(pc.sort_indices(subjects))
        assign = split_assignment(subjects, ring, by, r)
        leaks = 0
        leak_subjects: set[Any] = set()
        moved = 0
        leak_out: str | None = None
        leak_sink: Sink | None = None
        if ts is not None and leakage_threshold is not None:
            thr = _check_threshold(leakage_threshold)
            leak_out = str(output_uri).rstrip("/") + ".leaks.parquet"
            lschema = (
                pair_schema(
                    ts.source.schema.field(ent_col).type, ts.source.schema.field(ent_col).type
                )
                .append(pa.field("a_split", pa.string()))
                .append(pa.field("b_split", pa.string()))
            )
            leak_sink = open_sink(leak_out, lschema, overwrite=opts.overwrite)
            sinks.append(leak_sink)
            names_arr = pa.array(list(names), pa.string())
            links: list[tuple[Any, Any]] = []
            for batch in scan_pairs(
                ts,
                None,
                thr,
                backend=backend_for(opts.device),
                block_rows=opts.block_rows,
                different_ids=True,
            ):
                sa = assign[pc.index_in(batch.column(0), value_set=subjects).to_numpy()]
                sb = assign[pc.index_in(batch.column(1), value_set=subjects).to_numpy()]
                cross = sa != sb
                if not cross.any():
                    continue
                sel = pa.array(np.flatnonzero(cross))
                b2 = batch.take(sel)
                leak_sink.write(
                    pa.RecordBatch.from_arrays(
                        [
                            *b2.columns,
                            names_arr.take(pa.array(sa[cross])),
                            names_arr.take(pa.array(sb[cross])),
                        ],
                        schema=lschema,
                    )
                )
                leaks += b2.num_rows
                links.extend(zip(b2.column(0).to_pylist(), b2.column(1).to_pylist(), strict=True))
            leak_subjects = {x for pair in links for x in pair}
            if merge_leaks and links:
                moved = _merge(links, subjects, assign)
        counts = np.bincount(assign, minlength=len(r))
        rows: dict[str, dict[str, int]] = {n: {} for n in names}
        dists: dict[str, Any] = {}
        for t, src in tables.items():
            meta = _meta(src.schema)
            like = table_sink_uri(output_uri, t, input_uri)
            suffix = like[len(str(output_uri).rstrip("/")) :]
            tsinks = [
                open_sink(
                    f"{str(output_uri).rstrip('/')}/{n}{suffix}",
                    src.schema,
                    overwrite=opts.overwrite,
                    metadata=meta,
                )
                for n in names
            ]
            sinks.extend(tsinks)
            qis = _qi_columns(opts, t, src.schema)
            whole: dict[str, dict[str, int]] = {c: {} for c in qis}
            per: dict[str, dict[str, dict[str, int]]] = {n: {c: {} for c in qis} for n in names}
            for batch in src.batches():
                batch = batch.select(src.schema.names)
                where = assign[pc.index_in(batch.column(ent_col), value_set=subjects).to_numpy()]
                for c in qis:
                    _count_values(whole[c], batch.column(c))
                for k, n in enumerate(names):
                    part = batch.filter(pa.array(where == k))
                    if part.num_rows:
                        tsinks[k].write(part)
                        for c in qis:
                            _count_values(per[n][c], part.column(c))
                    rows[n][t] = rows[n].get(t, 0) + part.num_rows
            for n in names:
                for c in qis:
                    dists[f"{n}: {t}.{c}"] = quasi_identifier_shift(whole[c], per[n][c])
        for s in sinks:
            s.commit()
        n_sub = len(subjects)
        report = {
            "command": "split",
            "by": by,
            "entity_column": ent_col,
            "keyed_hash": f"PRF split/{by} of the keyring {ring.keyring_id}",
            "ratios_asked": dict(zip(names, [float(x) for x in r], strict=True)),
            "subjects": n_sub,
            "subjects_per_split": dict(zip(names, [int(c) for c in counts], strict=True)),
            "ratios_achieved": dict(
                zip(names, [round(float(c) / max(n_sub, 1), 6) for c in counts], strict=True)
            ),
            "rows_per_split": rows,
            "leakage_threshold": leakage_threshold,
            "leaked_pairs": leaks if leakage_threshold is not None else None,
            "leaked_subjects": len(leak_subjects) if leakage_threshold is not None else None,
            "subjects_moved_by_merge": moved,
            "leaks_output": display_uri(leak_out) if leak_out else None,
            "quasi_identifiers": dists,
            "notes": opts.notes,
        }
        write_report(report_path, report)
        rows_in = sum(sum(v.values()) for v in rows.values())
        data_sinks = [s for s in sinks if s is not leak_sink]
        outs = [s.ref() for s in data_sinks]
        if leak_sink is not None:
            outs.append(leak_sink.ref())
        run.complete(
            report, rows_in=rows_in, rows_out=rows_in, outputs=[*outs, file_ref(report_path)]
        )
    except BaseException as exc:
        for s in sinks:
            with contextlib.suppress(Exception):
                s.abort()
        run.fail(exc)
        raise
    report["lineage"] = str(run.lineage_dir)
    report["receipt"] = run.receipt
    report["report"] = str(report_path)
    return report


def _merge(links: list[tuple[Any, Any]], subjects: pa.Array, assign: np.ndarray) -> int:
    """Move each group of linked subjects into the lowest split index among them."""
    a = pc.index_in(pa.array([x for x, _ in links], subjects.type), value_set=subjects)
    b = pc.index_in(pa.array([y for _, y in links], subjects.type), value_set=subjects)
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for x in {i for pair in zip(a.to_pylist(), b.to_pylist(), strict=True) for i in pair}:
        groups.setdefault(find(x), []).append(x)
    moved = 0
    for members in groups.values():
        target = min(int(assign[m]) for m in members)
        for m in members:
            if assign[m] != target:
                assign[m] = target
                moved += 1
    return moved
