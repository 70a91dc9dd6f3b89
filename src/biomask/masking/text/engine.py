"""Presidio + spaCy detection, set up for speed and for running offline.

What this module decides, and why:

* **The NLP engine is configured explicitly** through Presidio's ``NlpEngineProvider`` with
  a configuration dict: the policy's model and language only, the NER labels that are not
  PII here ignored (dates, numbers, organisations...), and a spaCy engine subclass that
  loads only the ``ner`` component. The tagger, parser and lemmatizer cost a third of the
  time and detect nothing; Presidio's context enhancement uses lemmas, so lower-cased
  token text stands in for them, and biomask's own recognizers check context on the raw
  text instead.
* **No network, ever.** Presidio's spaCy engine downloads a missing model; this one raises
  :class:`~biomask.errors.PolicyError` naming the model and how to install it. Presidio's
  e-mail recognizer calls ``tldextract``, which fetches the public-suffix list over HTTP;
  the registry here uses :class:`~biomask.masking.text.recognizers.OfflineEmailRecognizer`
  instead, and no recognizer that needs ``tldextract`` is loaded.
* **Batching.** Texts go through ``nlp.pipe`` in fixed chunks, then through the Presidio
  recognizers with the precomputed NLP artifacts. The chunks are the unit of work both in
  process and in the optional process pool, so the two give identical results.
* **One engine per process**, cached: loading spaCy takes a second or two.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import regex

from biomask.errors import PolicyError

__all__ = [
    "DEFAULT_UNLINKED",
    "NER_ENTITIES",
    "PATTERN_ENTITIES",
    "SUPPORTED_ENTITIES",
    "Detection",
    "TextEngine",
    "check_model",
    "default_workers",
    "detect",
    "get_engine",
    "nlp_configuration",
    "segments",
]

log = logging.getLogger("biomask.text")

#: Entity types found by the NER model (spaCy labels mapped to Presidio's names).
NER_ENTITIES = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION"})
#: Entity types found by pattern recognizers.
PATTERN_ENTITIES = frozenset(
    {"EMAIL_ADDRESS", "PHONE_NUMBER", "DOCUMENT_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"}
)
SUPPORTED_ENTITIES = NER_ENTITIES | PATTERN_ENTITIES
#: Types always looked for, replaced per the rule's ``unlinked`` setting when no domain is
#: linked: PII that has no business in an operator's note, whatever the policy lists.
DEFAULT_UNLINKED = ("CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS")

_LABEL_MAP = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "NORP": "NRP",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
}
# Not PII in enrolment notes (a capture date is not an identifier; counts are not), and
# frequent false positives on booth numbers, times and finger names.
_IGNORED_LABELS = [
    "CARDINAL",
    "DATE",
    "EVENT",
    "LANGUAGE",
    "LAW",
    "MONEY",
    "ORDINAL",
    "PERCENT",
    "PRODUCT",
    "QUANTITY",
    "TIME",
    "WORK_OF_ART",
]
#: Texts per unit of work (one ``nlp.pipe`` call, one pool task).
CHUNK = 256
#: Below this many texts a batch is detected in process even when a pool is allowed.
POOL_MIN = 2048


class Detection(NamedTuple):
    """One detected span: character offsets into the analysed text, type and score."""

    start: int
    end: int
    entity_type: str
    score: float


def _install_hint(model: str) -> str:
    return (
        f"the spaCy model '{model}' (policy nlp.model) is not installed: install it with "
        f"'pip install {model.replace('_', '-')}' (or 'python -m spacy download {model}' "
        "for the models spaCy publishes), or set nlp.model to an installed model; biomask "
        "never downloads models at run time"
    )


def check_model(model: str, *, path: str | None = None, line: int | None = None) -> None:
    """Raise :class:`PolicyError` unless ``model`` is an installed package or a directory.

    Called when a ``text`` rule is bound, so a missing model stops the run before anything
    is read or written, with one message that says how to fix it.
    """
    ok = importlib.util.find_spec(model) is not None if model.isidentifier() else False
    if not ok and not Path(model).is_dir():
        raise PolicyError(_install_hint(model), path=path, line=line, field="nlp.model")


def nlp_configuration(model: str, language: str) -> dict[str, Any]:
    """The Presidio ``NlpEngineProvider`` configuration biomask uses (one language only)."""
    return {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": language, "model_name": model}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": dict(_LABEL_MAP),
            "labels_to_ignore": list(_IGNORED_LABELS),
            "low_score_entity_names": [],
            "default_score": 0.85,
        },
    }


def _spacy_engine_class() -> type[Any]:
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

    class BiomaskSpacyNlpEngine(SpacyNlpEngine):  # type: ignore[misc]
        """spaCy engine: NER only, no download, no GPU probing, lemmas from token text."""

        def load(self) -> None:
            import spacy

            self.nlp = {}
            for m in self.models:
                name = m["model_name"]
                check_model(name)
                nlp = spacy.load(name, exclude=_EXCLUDE)
                if nlp.lang != m["lang_code"]:
                    raise PolicyError(
                        f"the spaCy model '{name}' is for language '{nlp.lang}', not "
                        f"'{m['lang_code']}' (policy nlp.language)",
                        field="nlp.language",
                    )
                self.nlp[m["lang_code"]] = nlp

        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
            entities, scores = self._get_updated_entities(
                list(doc.ents), [self.ner_model_configuration.default_score] * len(doc.ents)
            )
            return NlpArtifacts(
                entities=entities,
                tokens=doc,
                tokens_indices=[t.idx for t in doc],
                lemmas=[t.lower_ for t in doc],
                nlp_engine=self,
                language=language,
                scores=scores,
            )

    return BiomaskSpacyNlpEngine


# Everything but the tokenizer and NER: en_core_web_sm's NER has its own embedding layer.
_EXCLUDE = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]


class TextEngine:
    """A Presidio ``AnalyzerEngine`` over a NER-only spaCy pipeline, for one language.

    Use :func:`get_engine` (cached per process) rather than building one.
    """

    def __init__(self, model: str, language: str) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            SpacyRecognizer,
        )

        from biomask.masking.text.recognizers import biomask_recognizers

        check_model(model)
        self.model = model
        self.language = language
        provider = NlpEngineProvider(
            nlp_engines=(_spacy_engine_class(),),
            nlp_configuration=nlp_configuration(model, language),
        )
        self.nlp_engine = provider.create_engine()
        self.nlp = self.nlp_engine.nlp[language]
        recognizers = [
            SpacyRecognizer(supported_language=language, supported_entities=sorted(NER_ENTITIES)),
            *biomask_recognizers(language),
            CreditCardRecognizer(supported_language=language),
            IbanRecognizer(supported_language=language),
            IpRecognizer(supported_language=language),
        ]
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[language])
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=self.nlp_engine,
            supported_languages=[language],
        )

    def analyze(
        self, texts: Sequence[str], entities: Sequence[str], threshold: float
    ) -> list[list[Detection]]:
        """Detect ``entities`` in each text: one ``nlp.pipe`` pass, then the recognizers.

        Returns
        -------
        list of list of Detection
            Per text, its detections sorted by start (overlaps are resolved later, with
            the known-value lexicon's hits, by the text operator).
        """
        ents = list(entities)
        need_ner = bool(NER_ENTITIES.intersection(ents))
        out: list[list[Detection]] = []
        if need_ner:
            docs = self.nlp.pipe(texts, batch_size=CHUNK)
        else:
            docs = (self.nlp.make_doc(t) for t in texts)
        for text, doc in zip(texts, docs, strict=True):
            artifacts = self.nlp_engine._doc_to_nlp_artifact(doc, self.language)
            results = self.analyzer.analyze(
                text,
                self.language,
                entities=ents,
                nlp_artifacts=artifacts,
                score_threshold=threshold,
            )
            out.append(
                sorted(
                    Detection(r.start, r.end, r.entity_type, float(r.score)) for r in results
                )
            )
        return out


_ENGINES: dict[tuple[str, str], TextEngine] = {}
_ENGINE_LOCK = threading.Lock()


def get_engine(model: str, language: str) -> TextEngine:
    """The process's engine for ``(model, language)``, built on first use."""
    key = (model, language)
    engine = _ENGINES.get(key)
    if engine is None:
        with _ENGINE_LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                engine = TextEngine(model, language)
                _ENGINES[key] = engine
    return engine


# -- segments ----------------------------------------------------------------------------

# Sentence ends: '.', '!' or '?' after a lower-case word of 3+ letters, a digit or a
# closing bracket, then space and a capital; or a line break. Not after "J." or "no.".
_SENTENCE_END = regex.compile(
    r"(?:(?<=[\p{Ll}]{3}[.!?])|(?<=[\d)\]][.!?]))[ \t]+(?=[\p{Lu}\d\"'(])|\n+(?!-- ?\n)"
)
_SIGNATURE = regex.compile(r"\n-- ?\n")
_MAX_SEGMENT = 20_000


def segments(text: str) -> list[tuple[int, int]]:
    """Split a note into sentence-like segments, as (start, end) offsets.

    Why: notes repeat boilerplate sentences ("All ten fingers captured."), and the NER
    model looks only a few words around each token, so detecting once per distinct
    *sentence* gives the same spans as per note at a fraction of the work. A signature
    block (from a ``-- `` line to the end) stays one segment so that the name in it keeps
    its context. Segments never split inside a name ("J. Smith") or "no. 123".
    """
    sig = _SIGNATURE.search(text)
    body_end = sig.start() if sig else len(text)
    out: list[tuple[int, int]] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text, 0, body_end):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if body_end > pos:
        out.append((pos, body_end))
    if sig:
        out.append((sig.start() + 1, len(text)))
    # a pathological segment (no punctuation for pages) is cut so spaCy's limits hold
    final: list[tuple[int, int]] = []
    for a, b in out:
        while b - a > _MAX_SEGMENT:
            final.append((a, a + _MAX_SEGMENT))
            a += _MAX_SEGMENT
        final.append((a, b))
    return final


# -- batch detection, optionally in a process pool -------------------------------------


def default_workers() -> int:
    """Worker processes for large batches: ``BIOMASK_TEXT_WORKERS``, else the usable cores.

    ``1`` (or ``0``) detects in process. The pool changes speed, never results.
    """
    env = os.environ.get("BIOMASK_TEXT_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("BIOMASK_TEXT_WORKERS=%r is not a number; using 1", env)
            return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


@dataclass(frozen=True)
class _Task:
    model: str
    language: str
    entities: tuple[str, ...]
    threshold: float
    texts: tuple[str, ...]


def _run_task(task: _Task) -> list[list[Detection]]:
    engine = get_engine(task.model, task.language)
    return engine.analyze(task.texts, task.entities, task.threshold)


def _warm(model: str, language: str) -> None:
    get_engine(model, language)


_POOLS: dict[tuple[str, str, int], Executor] = {}


def _pool(model: str, language: str, workers: int) -> Executor:
    key = (model, language, workers)
    pool = _POOLS.get(key)
    if pool is None:
        # spawn, not fork: the parent holds Arrow and BLAS thread pools that a fork would
        # copy in an undefined state. Workers load the model once and live for the process.
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_warm,
            initargs=(model, language),
        )
        _POOLS[key] = pool
    return pool


@atexit.register
def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def detect(
    texts: Sequence[str],
    *,
    model: str,
    language: str,
    entities: Sequence[str],
    threshold: float,
    workers: int = 1,
    pool_min: int = POOL_MIN,
) -> list[list[Detection]]:
    """Detect entities in many texts, in chunks of :data:`CHUNK`, optionally in parallel.

    Parameters
    ----------
    workers:
        Processes to spread the chunks over; the pool is used only when there are at
        least ``pool_min`` texts (starting workers costs more than small batches gain).
        Every chunk is analysed the same way in process or in a worker, so the results
        are identical either way.
    """
    ents = tuple(sorted(entities))
    tasks = [
        _Task(model, language, ents, threshold, tuple(texts[i : i + CHUNK]))
        for i in range(0, len(texts), CHUNK)
    ]
    out: list[list[Detection]] = []
    if workers > 1 and len(texts) >= pool_min and len(tasks) > 1:
        check_model(model)
        for part in _pool(model, language, workers).map(_run_task, tasks):
            out.extend(part)
        return out
    for task in tasks:
        out.extend(_run_task(task))
    return out
