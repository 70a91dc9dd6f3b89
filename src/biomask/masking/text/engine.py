"""Presidio + spaCy detection, set up for speed and for running offline.

What this module decides, and why:

* **The NLP engine is configured explicitly** through Presidio's ``NlpEngineProvider`` with
  a configuration dict: the policy's model and language only, the NER labels that are not
  PII here ignored (dates, numbers, organisations...), and a spaCy engine subclass that
  loads only the ``ner`` component. The tagger, parser and lemmatizer cost a third of the
  time and detect nothing. Without lemmas Presidio's lemma-based context enhancement has
  nothing to work on, so it is replaced by a no-op and biomask's recognizers check their
  context words on the raw text themselves (Presidio's card, IBAN and IP recognizers
  validate checksums and need no context).
* **Recall beyond the model.** A small NER model misses names it has never seen and
  tags capitalized ordinary words; the engine adds vocabulary-based name recognizers and
  drops NER names that are one ordinary word opening a sentence ("Queue was long").
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
import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import regex

from biomask.errors import PolicyError
from biomask.masking.text.words import (
    WORDS,
    load_vocabulary,
    model_dir,
    sentence_start,
    trim_ordinary,
)

__all__ = [
    "ALWAYS_DETECTED",
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
    {
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "DOCUMENT_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
        "US_SSN",
        "UK_NINO",
    }
)
SUPPORTED_ENTITIES = NER_ENTITIES | PATTERN_ENTITIES
#: Types always looked for, whatever the rule links: a type with no linked domain is
#: replaced per the rule's ``unlinked`` setting (``<TYPE>`` or ``***``), so a rule with no
#: entities still removes every name, address and number it finds (fail closed).
#: LOCATION, NRP and ORGANIZATION are looked for only when linked (noisy, rarely PII).
ALWAYS_DETECTED = (
    "CREDIT_CARD",
    "DOCUMENT_NUMBER",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "IP_ADDRESS",
    "PERSON",
    "PHONE_NUMBER",
    "UK_NINO",
    "US_SSN",
)

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
POOL_MIN = 16384


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


def check_model(
    model: str,
    *,
    language: str | None = None,
    path: str | None = None,
    line: int | None = None,
) -> None:
    """Raise :class:`PolicyError` unless ``model`` is installed (a package or a directory)
    and, when ``language`` is given, is a model for that language.

    Called when a ``text`` rule is bound, so a missing model stops the run before anything
    is read or written, with one message that says how to fix it. Reads only the model's
    ``meta.json``: loading the model itself takes seconds and happens on first use.
    """
    try:
        ok = importlib.util.find_spec(model) is not None if model.isidentifier() else False
    except (ImportError, ValueError):
        ok = False
    if not ok and not Path(model).is_dir():
        raise PolicyError(_install_hint(model), path=path, line=line, field="nlp.model")
    if language is None:
        return
    folder = model_dir(model)
    meta = folder / "meta.json" if folder is not None else None
    if meta is not None and meta.exists():
        try:
            lang = json.loads(meta.read_text("utf-8")).get("lang")
        except (OSError, ValueError):
            lang = None
        if lang and lang != language:
            raise PolicyError(
                f"the spaCy model '{model}' is for language '{lang}', not '{language}': set "
                f"nlp.language to '{lang}' or nlp.model to a '{language}' model",
                path=path,
                line=line,
                field="nlp.language",
            )


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

    class BiomaskSpacyNlpEngine(SpacyNlpEngine):
        """spaCy engine: NER only, no download, no GPU probing, no lemmas."""

        nlp: Any

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
            # No lemmas: context is checked by biomask's recognizers on the raw text and
            # the analyzer's lemma enhancer is off, so building them (and the keywords
            # Presidio derives from them, token by token) would be wasted work.
            entities, scores = self._get_updated_entities(
                list(doc.ents),
                [float(self.ner_model_configuration.default_score or 0.85)] * len(doc.ents),
            )
            return NlpArtifacts(
                entities=entities,
                tokens=doc,
                tokens_indices=[],
                lemmas=[],
                nlp_engine=self,
                language=language,
                scores=scores,
            )

    return BiomaskSpacyNlpEngine


def _import_presidio() -> None:
    """Import presidio_analyzer without its device probe importing torch.

    Presidio picks a torch device when its NLP-engine package is imported, which imports
    torch (two seconds, in every worker) and probes CUDA. biomask runs the small spaCy
    model on the CPU, so the probe is answered with ``PRESIDIO_DEVICE=cpu`` for the
    duration of the import only, unless the caller chose a device already.
    """
    import sys

    if "presidio_analyzer.nlp_engine" in sys.modules or os.environ.get("PRESIDIO_DEVICE"):
        import presidio_analyzer

        return
    os.environ["PRESIDIO_DEVICE"] = "cpu"
    try:
        import presidio_analyzer  # noqa: F401
        from presidio_analyzer.nlp_engine import device_detector  # noqa: F401
    finally:
        os.environ.pop("PRESIDIO_DEVICE", None)


def _no_context_enhancer() -> Any:
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class NoContextEnhancer(ContextAwareEnhancer):
        """Leaves scores as the recognizers set them (they check context themselves)."""

        def __init__(self) -> None:
            super().__init__(
                context_similarity_factor=0.0,
                min_score_with_context_similarity=0.0,
                context_prefix_count=0,
                context_suffix_count=0,
            )

        def enhance_using_context(
            self,
            text: str,
            raw_results: list[Any],
            nlp_artifacts: Any,
            recognizers: list[Any],
            context: list[str] | None = None,
        ) -> list[Any]:
            return raw_results

    return NoContextEnhancer()


# Everything but the tokenizer and NER: en_core_web_sm's NER has its own embedding layer.
_EXCLUDE = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]


class TextEngine:
    """A Presidio ``AnalyzerEngine`` over a NER-only spaCy pipeline, for one language.

    Use :func:`get_engine` (cached per process) rather than building one.
    """

    def __init__(self, model: str, language: str) -> None:
        check_model(model)
        _import_presidio()
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            SpacyRecognizer,
        )

        from biomask.masking.text.recognizers import biomask_recognizers

        self.model = model
        self.language = language
        provider = NlpEngineProvider(
            nlp_engines=(_spacy_engine_class(),),
            nlp_configuration=nlp_configuration(model, language),
        )
        self.nlp_engine: Any = cast(Any, provider.create_engine())
        self.nlp = self.nlp_engine.nlp[language]
        self.vocabulary = load_vocabulary(model, language)
        recognizers = [
            SpacyRecognizer(supported_language=language, supported_entities=sorted(NER_ENTITIES)),
            *biomask_recognizers(language, self.vocabulary),
            CreditCardRecognizer(supported_language=language),
            IbanRecognizer(supported_language=language),
            IpRecognizer(supported_language=language),
        ]
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[language])
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=self.nlp_engine,
            supported_languages=[language],
            context_aware_enhancer=_no_context_enhancer(),
        )

    def analyze(
        self, texts: Sequence[str], entities: Sequence[str], threshold: float, ner: bool = True
    ) -> list[list[Detection]]:
        """Detect ``entities`` in each text: one ``nlp.pipe`` pass, then the recognizers.

        Parameters
        ----------
        ner:
            Run the NER model (False: tokenizer and pattern recognizers only, for texts
            where the caller knows NER cannot add anything; see
            :func:`~biomask.masking.text.words.needs_ner`).

        Returns
        -------
        list of list of Detection
            Per text, its detections sorted by start (overlaps are resolved later, with
            the known-value lexicon's hits, by the text operator).
        """
        ents = list(entities)
        need_ner = ner and bool(NER_ENTITIES.intersection(ents))
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
            dets = [self._refine_ner(text, r) for r in results]
            out.append(sorted(d for d in dets if d is not None))
        return out

    def _refine_ner(self, text: str, result: Any) -> Detection | None:
        """Drop or cut NER PERSON spans that are not (only) names.

        The small model mistakes a capital at the start of a sentence for a name's
        ("Queue was long", "Subject requested...": one ordinary word there is dropped),
        and tags lower-case phrases ("checked against"): a lower-case span keeps only the
        stretch between its first and last word that is not an ordinary word ("anacleto
        anguiano asked" -> "anacleto anguiano"), and is dropped when every word is one.
        """
        det = Detection(result.start, result.end, result.entity_type, float(result.score))
        if result.entity_type != "PERSON" or not self.vocabulary:
            return det
        meta = result.recognition_metadata or {}
        if meta.get("recognizer_name") != "SpacyRecognizer":
            return det
        words = list(WORDS.finditer(text, result.start, result.end))
        if not words:
            return None
        if any(m.group()[:1].isupper() for m in words):
            single_ordinary = (
                len(words) == 1
                and self.vocabulary.is_ordinary(words[0].group())
                and sentence_start(text, result.start)
            )
            return None if single_ordinary else det
        if all(self.vocabulary.is_known(m.group()) for m in words):
            return None
        words = trim_ordinary(words, self.vocabulary)
        return det._replace(start=words[0].start(), end=words[-1].end())


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
# a signature block: the "-- " line and up to three short lines under it (name, e-mail,
# phone); a long text may hold many (a thread of notes), each its own block
_SIGNATURE = regex.compile(
    r"\n-- ?\n(?:[^\n]{1,200}+(?=\n|$)(?:\n(?!-- ?(?:\n|$))[^\n]{1,200}+(?=\n|$)){0,2})?"
)
_MAX_SEGMENT = 20_000


def segments(text: str) -> list[tuple[int, int]]:
    """Split a note into sentence-like segments, as (start, end) offsets.

    Why: notes repeat boilerplate sentences ("All ten fingers captured."), and the NER
    model looks only a few words around each token, so detecting once per distinct
    *sentence* gives the same spans as per note at a fraction of the work. A signature
    block (a ``-- `` line and up to three short lines under it) stays one segment so that
    the name in it keeps its context. Segments never split inside a name ("J. Smith") or
    "no. 123". Linear in the text's length, so a large cell costs what its sentences do.
    """
    out: list[tuple[int, int]] = []
    body = 0
    for sig in [*_SIGNATURE.finditer(text), None]:
        body_end = sig.start() if sig is not None else len(text)
        pos = body
        for m in _SENTENCE_END.finditer(text, body, body_end):
            if m.start() > pos:
                out.append((pos, m.start()))
            pos = m.end()
        if body_end > pos:
            out.append((pos, body_end))
        if sig is not None:
            out.append((sig.start() + 1, sig.end()))
            body = sig.end()
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
    ner: bool
    texts: tuple[str, ...]


def _run_task(task: _Task) -> list[list[Detection]]:
    engine = get_engine(task.model, task.language)
    return engine.analyze(task.texts, task.entities, task.threshold, task.ner)


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


_POOL_BROKEN = False


def _mark_broken(model: str, language: str, workers: int) -> None:
    global _POOL_BROKEN
    _POOL_BROKEN = True
    pool = _POOLS.pop((model, language, workers), None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


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
    ner: Sequence[bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[Detection]]:
    """Detect entities in many texts, in chunks of :data:`CHUNK`, optionally in parallel.

    Parameters
    ----------
    workers:
        Processes to spread the chunks over; the pool is used only when there are at
        least ``pool_min`` texts (starting workers costs more than small batches gain).
        Every chunk is analysed the same way in process or in a worker, so the results
        are identical either way.
    ner:
        Per text, whether to run the NER model on it (default: all).
    progress:
        Called with (texts done, texts) after each chunk, for a progress display.
    """
    ents = tuple(sorted(entities))
    flags = [True] * len(texts) if ner is None else list(ner)
    order: list[int] = []
    tasks: list[_Task] = []
    for flag in (True, False):
        idx = [i for i, f in enumerate(flags) if f is flag]
        order.extend(idx)
        for k in range(0, len(idx), CHUNK):
            chunk = tuple(texts[i] for i in idx[k : k + CHUNK])
            tasks.append(_Task(model, language, ents, threshold, flag, chunk))
    results: list[list[Detection]] = []
    done = False
    if workers > 1 and len(texts) >= pool_min and len(tasks) > 1 and not _POOL_BROKEN:
        check_model(model)
        try:
            for part in _pool(model, language, workers).map(_run_task, tasks):
                results.extend(part)
                if progress is not None:
                    progress(len(results), len(texts))
            done = True
        except BrokenProcessPool:
            # e.g. a script without an ``if __name__ == "__main__":`` guard, which spawned
            # workers cannot import: same results in process, only slower
            log.warning(
                "text detection workers could not start; detecting in process (guard the "
                "script's entry point with `if __name__ == '__main__':` to use %d cores)",
                workers,
            )
            _mark_broken(model, language, workers)
            results = []
    if not done:
        for task in tasks:
            results.extend(_run_task(task))
            if progress is not None:
                progress(len(results), len(texts))
    out: list[list[Detection]] = [[] for _ in texts]
    for i, dets in zip(order, results, strict=True):
        out[i] = dets
    return out
