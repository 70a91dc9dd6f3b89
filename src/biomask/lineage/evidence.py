"""Evidence collectors for the dossier: distributions, k-anonymity, residual-PII scan.

They watch the batches going into and out of the Masker and keep only what may be written:

* **Distributions** (Art. 10(2)(f) bias examination) of the policy's quasi-identifier
  columns. Category values are recorded only for QI columns the policy *keeps*
  (``op: keep``, e.g. gender, nationality), before and after masking, so the effect of
  quarantine on the demographics shows. A QI column that is masked (``generalize`` age
  bands) gets its *after* distribution only: its before values are the raw data.
  Any other masked QI column gets no distribution at all.
* **k-anonymity**: counts of each combination of the (recorded) QI columns after masking;
  k is the smallest group. Only counts leave the collector, never the combinations.
* **Residual-PII scan**: every distinct input value of a masked string column is hashed
  with BLAKE2b under a random per-run key that lives only in memory; after the run, every
  output string value, every token and every 2-3 word n-gram of output strings is hashed
  the same way and looked up. A hit means some output text equals some masked input
  value. Only counts and column names are reported; the key is discarded, so the hashes
  could not be reversed even if they leaked (and they are never written).

Work is done once per distinct value per batch (``pyarrow.compute.unique``), and digests
are kept as 64-bit integers in NumPy arrays: memory grows with the number of distinct
masked values, about 8 bytes each, not with rows.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.policies import Policy

__all__ = ["TOP_CATEGORIES", "EvidenceCollector"]

TOP_CATEGORIES = 40
"""Categories kept per distribution; the rest are summed as ``(other)``."""

MIN_TOKEN = 3
"""Shorter strings are not scanned: too short to identify anyone, and pure noise."""

# Inputs that are not used as residual-PII probes. A shifted date or an age band lives in
# the same value space as the input by design and can equal another record's real value
# without leaking anything; free text keeps its non-PII words on purpose (a note "fine"
# stays "fine"), and the PII inside it is probed through the linked columns instead.
_NOT_PROBES = frozenset({"keep", "date_shift", "generalize", "text"})
_WS = r"\s+"
_NON_WORD = r"[\W_]+"
_STRIP = "\"'`.,;:!?()[]{}<>"
NULL_LABEL = "(null)"
OTHER_LABEL = "(other)"


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _decoded(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(arr.type):
        return arr.cast(arr.type.value_type)
    return arr


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sort-based unique (NumPy's hash-based ``unique`` is slow on many uint64s)."""
    if a.size == 0:
        return a
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def _label(v: Any) -> str:
    return NULL_LABEL if v is None else str(v)


@dataclass
class _Rule:
    op: str
    masks: bool
    qi: bool


@dataclass
class EvidenceCollector:
    """Collects the dossier's evidence for one run; holds no data value after ``finish``.

    Parameters
    ----------
    policy:
        Names the quasi-identifier columns and what each column's rule does.
    scan:
        Whether to run the residual-PII scan (off for ``unmask``, whose output is meant to
        hold the originals).
    """

    policy: Policy | None
    scan: bool = True
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _before: dict[str, Counter[str]] = field(default_factory=dict)
    _after: dict[str, Counter[str]] = field(default_factory=dict)
    _combos: dict[str, Counter[tuple[str, ...]]] = field(default_factory=dict)
    _combo_cols: dict[str, list[str]] = field(default_factory=dict)
    _inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _rules_cache: dict[str, dict[str, _Rule]] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the key
        return "EvidenceCollector()"

    # -- rules -----------------------------------------------------------------------------
    def _rules(self, table: str) -> dict[str, _Rule]:
        if table in self._rules_cache:
            return self._rules_cache[table]
        rules: dict[str, _Rule] = {}
        if self.policy is not None:
            specs = self.policy.table_specs()
            spec = specs.get(table)
            if spec is None and len(specs) == 1:
                spec = next(iter(specs.values()))
            if spec is not None:
                for name, rule in spec.columns.items():
                    rules[name] = _Rule(op=rule.op, masks=rule.masks, qi=rule.quasi_identifier)
        self._rules_cache[table] = rules
        return rules

    def qi_columns(self, table: str) -> dict[str, str]:
        """QI column -> how it is charted: ``before_after``, ``after_only``."""
        out: dict[str, str] = {}
        for name, r in self._rules(table).items():
            if not r.qi:
                continue
            if r.op == "keep":
                out[name] = "before_after"
            elif r.op == "generalize":
                out[name] = "after_only"
        return out

    def withheld_qi_columns(self, table: str) -> dict[str, str]:
        """QI columns not charted (masked by an operator whose values are not shown)."""
        return {
            n: r.op
            for n, r in self._rules(table).items()
            if r.qi and r.op not in ("keep", "generalize")
        }

    # -- hashing ---------------------------------------------------------------------------
    def _digests(self, values: pa.Array) -> np.ndarray:
        """Keyed BLAKE2b-64 of each (distinct) string, as a sorted unique uint64 array."""
        keyed = hashlib.blake2b(key=self._key, digest_size=8)  # copy() skips re-keying
        out = []
        for v in values.cast(pa.binary()).to_pylist():
            h = keyed.copy()
            h.update(v)
            out.append(h.digest())
        return _sorted_unique(np.frombuffer(b"".join(out), dtype=np.uint64))

    @staticmethod
    def _normal(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Distinct values, whitespace collapsed and trimmed, lower-cased."""
        arr = pc.unique(_decoded(arr)).drop_null()
        arr = pc.utf8_lower(pc.replace_substring_regex(arr, _WS, " "))
        return pc.unique(pc.utf8_trim_whitespace(arr))

    @staticmethod
    def _long(arr: pa.Array) -> pa.Array:
        return pc.unique(arr.filter(pc.greater_equal(pc.utf8_length(arr), MIN_TOKEN)))

    @classmethod
    def _candidates(cls, norm: pa.Array) -> pa.Array:
        """Every output string's candidates, vectorized with Arrow (no per-row Python).

        The whole value; its whitespace-separated tokens stripped of punctuation, and 2-3
        token n-grams of those (so a masked "ada lovelace" is found inside free text);
        and its punctuation-separated words (a surname inside "lovelace-smith").
        """
        tokens_list = pc.split_pattern(norm, " ")
        tokens = pc.utf8_trim(pc.list_flatten(tokens_list), _STRIP)
        parents = pc.list_parent_indices(tokens_list).to_numpy()
        parts = [norm, tokens, pc.list_flatten(pc.split_pattern_regex(norm, _NON_WORD))]
        for n in (2, 3):
            m = len(tokens) - n + 1
            if m <= 0:
                break
            same = np.ones(m, dtype=bool)
            for j in range(1, n):
                same &= parents[:m] == parents[j : j + m]
            if not same.any():
                break
            grams = pc.binary_join_element_wise(*[tokens.slice(j, m) for j in range(n)], " ")
            parts.append(grams.filter(pa.array(same)))
        return cls._long(pa.concat_arrays([p.cast(pa.string()) for p in parts]))

    # -- observation -----------------------------------------------------------------------
    def observe_input(self, table: str, batch: pa.RecordBatch) -> None:
        """Count kept QI values; hash distinct values of masked string columns."""
        rules = self._rules(table)
        for name, how in self.qi_columns(table).items():
            if how == "before_after" and name in batch.schema.names:
                self._count(self._before, f"{table}.{name}", batch.column(name))
        if not self.scan:
            return
        for name in batch.schema.names:
            r = rules.get(name)
            if r is None or not r.masks or r.op in _NOT_PROBES:
                continue
            col = batch.column(name)
            if not _is_string(col.type):
                continue
            probes = self._long(self._normal(col))
            if len(probes):
                self._inputs.setdefault(f"{table}.{name}", []).append(self._digests(probes))

    def observe_output(self, table: str, batch: pa.RecordBatch) -> None:
        """Count QI values and QI combinations; collect output candidate hashes."""
        qis = [n for n in self.qi_columns(table) if n in batch.schema.names]
        for name in qis:
            self._count(self._after, f"{table}.{name}", batch.column(name))
        if qis and batch.num_rows:
            self._combo_cols[table] = qis
            keys = [f"c{i}" for i in range(len(qis))]
            grouped = (
                pa.table(
                    {
                        k: _decoded(batch.column(n)).cast(pa.string())
                        for k, n in zip(keys, qis, strict=True)
                    }
                )
                .group_by(keys)
                .aggregate([([], "count_all")])
            )
            counter = self._combos.setdefault(table, Counter())
            for row in grouped.to_pylist():
                counter[tuple(_label(row[k]) for k in keys)] += int(row["count_all"])
        if not self.scan:
            return
        for name in batch.schema.names:
            col = batch.column(name)
            if not _is_string(col.type):
                continue
            cands = self._candidates(self._normal(col))
            if len(cands):
                self._outputs.setdefault(f"{table}.{name}", []).append(self._digests(cands))

    @staticmethod
    def _count(target: dict[str, Counter[str]], key: str, col: pa.Array | pa.ChunkedArray) -> None:
        vc = pc.value_counts(_decoded(col))
        counter = target.setdefault(key, Counter())
        for item in vc.to_pylist():
            counter[_label(item["values"])] += int(item["counts"])

    # -- results ---------------------------------------------------------------------------
    @staticmethod
    def _top(counter: Counter[str]) -> dict[str, int]:
        if len(counter) <= TOP_CATEGORIES:
            return dict(sorted(counter.items()))
        top = dict(counter.most_common(TOP_CATEGORIES - 1))
        rest = sum(counter.values()) - sum(top.values())
        top[OTHER_LABEL] = rest
        return dict(sorted(top.items()))

    def distributions(self) -> dict[str, dict[str, Any]]:
        """``table.column -> {before, after, before_total, after_total, shift_pp}``."""
        out: dict[str, dict[str, Any]] = {}
        for key in sorted(set(self._before) | set(self._after)):
            before = self._before.get(key)
            after = self._after.get(key, Counter())
            entry: dict[str, Any] = {
                "before": self._top(before) if before is not None else None,
                "after": self._top(after),
                "before_total": sum(before.values()) if before is not None else None,
                "after_total": sum(after.values()),
            }
            shifts: dict[str, float] = {}
            if before is not None:
                bt = max(sum(before.values()), 1)
                at = max(sum(after.values()), 1)
                for cat in sorted(set(entry["before"]) | set(entry["after"])):
                    b = entry["before"].get(cat, 0) / bt * 100
                    a = entry["after"].get(cat, 0) / at * 100
                    shifts[cat] = round(a - b, 3)
            entry["shift_pp"] = shifts
            entry["max_abs_shift_pp"] = max((abs(v) for v in shifts.values()), default=0.0)
            out[key] = entry
        return out

    def k_anonymity(self) -> dict[str, dict[str, Any]]:
        """Per table: QI columns, k (smallest group), number of groups, rows in groups < 5."""
        out: dict[str, dict[str, Any]] = {}
        for table in sorted(self._combos):
            counter = self._combos[table]
            sizes = sorted(counter.values())
            out[table] = {
                "columns": list(self._combo_cols.get(table, [])),
                "k": sizes[0] if sizes else 0,
                "groups": len(sizes),
                "rows": sum(sizes),
                "groups_below_5": sum(1 for s in sizes if s < 5),
                "rows_in_groups_below_5": sum(s for s in sizes if s < 5),
            }
        return out

    def residual_scan(self) -> dict[str, Any]:
        """Counts of output strings equal to some masked input value; no value, no hash."""
        if not self.scan:
            return {
                "performed": False,
                "reason": "not run for this command",
                "hits": 0,
                "findings": [],
                "input_columns": [],
                "output_columns": [],
            }
        inputs = {k: _sorted_unique(np.concatenate(v)) for k, v in self._inputs.items()}
        findings = []
        total = 0
        for out_col in sorted(self._outputs):
            cand = _sorted_unique(np.concatenate(self._outputs[out_col]))
            for in_col in sorted(inputs):
                n = int(np.isin(cand, inputs[in_col], assume_unique=True).sum())
                if n:
                    findings.append({"output_column": out_col, "input_column": in_col, "hits": n})
                    total += n
        return {
            "performed": True,
            "method": (
                "keyed BLAKE2b (random per-run key, kept in memory only) of every distinct "
                "value of masked string columns, compared with the output values, their "
                f"tokens and 2-3 word n-grams (case-folded, at least {MIN_TOKEN} characters); "
                "date_shift, generalize and text inputs are not probes (their outputs share the "
                "input value space by design)"
            ),
            "input_columns": sorted(inputs),
            "output_columns": sorted(self._outputs),
            "hits": total,
            "findings": findings,
        }

    def finish(self) -> dict[str, Any]:
        """All evidence as a JSON-ready dict; forgets the hashing key and the digests."""
        qi_info: dict[str, Any] = {}
        for table in sorted(self._rules_cache):
            charted = self.qi_columns(table)
            withheld = self.withheld_qi_columns(table)
            if charted or withheld:
                qi_info[table] = {"charted": charted, "withheld": withheld}
        result = {
            "quasi_identifiers": qi_info,
            "distributions": self.distributions(),
            "k_anonymity": self.k_anonymity(),
            "residual_pii": self.residual_scan(),
        }
        self._key = b""
        self._inputs.clear()
        self._outputs.clear()
        return result
