"""Word-level helpers shared by the recognizers, the engine and the operator.

Kept free of Presidio and spaCy imports (the vocabulary loader imports spaCy's lookups
only when called), so that registering the ``text`` operator, which every policy load
does, costs nothing until a ``text`` rule actually runs.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from biomask.masking.checkdigits import icao_check_digit as _icao_check_digit

__all__ = [
    "EMAIL_RE",
    "ICAO_RE",
    "ROLE_NOUNS",
    "SENTENCE_START",
    "STOP",
    "WORDS",
    "Vocabulary",
    "common_words",
    "fold",
    "icao_check_digit",
    "icao_valid",
    "is_dictionary_word",
    "load_vocabulary",
    "looks_like_phone",
    "model_dir",
    "needs_ner",
    "sentence_start",
    "trim_ordinary",
    "unbalanced_close",
]

#: Nouns that introduce a person in enrolment notes ("Applicant Jan Kowal"); like titles,
#: they are never part of the name.
ROLE_NOUNS = frozenset(
    {
        "agent",
        "applicant",
        "assistant",
        "caller",
        "candidate",
        "client",
        "clerk",
        "customer",
        "donor",
        "employee",
        "guard",
        "guest",
        "inspector",
        "interpreter",
        "manager",
        "member",
        "nurse",
        "officer",
        "operator",
        "participant",
        "passenger",
        "patient",
        "receptionist",
        "resident",
        "respondent",
        "staff",
        "student",
        "subject",
        "supervisor",
        "technician",
        "traveler",
        "traveller",
        "user",
        "visitor",
        "volunteer",
        "witness",
        "worker",
    }
)
#: Whole words only: "DGXBJ" in "DGXBJ9UJ2" is not a word; "O'Brien" and "Jean-Luc" are.
WORDS = regex.compile(r"(?<![\w'’\-])[\p{L}\p{M}]+(?:['’\-][\p{L}\p{M}]+)*(?![\w'’\-])")
#: Words that never belong to a lower-case name run.
_STOP_WORDS = """
a an and are as at be been but by for from had has have he her his i in is it its me my no
not of on or our she so than that the their them then there they this to too up us was we
were what when which who will with you your
"""
STOP = frozenset(_STOP_WORDS.split())
#: Matches (searched up to a position) when that position starts a sentence.
SENTENCE_START = regex.compile(r"(?:^|[.!?:;\n(\"]\s*)$")
_OPENERS = frozenset('.!?:;("\n')


def sentence_start(text: str, pos: int) -> bool:
    """Whether ``pos`` starts a sentence (where a capital proves nothing).

    The same answer as ``SENTENCE_START.search(text, 0, pos)``, found by looking back
    over the whitespace only: constant time per word, so a long text stays linear.
    """
    i = pos - 1
    spaced = False
    while i >= 0:
        ch = text[i]
        if ch == "\n":
            return True
        if not ch.isspace():
            # "Note 29 - Young children": a dash between spaces opens a sentence too
            return ch in _OPENERS or (spaced and ch in "-–—")
        spaced = True
        i -= 1
    return True


_SUFFIXES = (
    ("ies", "y"),
    ("es", ""),
    ("s", ""),
    ("ed", ""),
    ("ed", "e"),
    ("ing", ""),
    ("ing", "e"),
    ("ly", ""),
)


@lru_cache(maxsize=65536)
def fold(word: str) -> str:
    """Case-folded, accent-free form of a word (cached: notes repeat their words)."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# contraction endings: "didn't", "I'd", "we'll", "they're", "I've", "I'm", "it's"
_CONTRACTION = regex.compile(r"^(?P<base>[\p{L}]+?)(?:n't|'d|'ll|'re|'ve|'m|'s)$")
_CONTRACTED = frozenset({"ca", "wo", "sha", "ai", "i", "y"})  # can't, won't, shan't, ain't


@lru_cache(maxsize=4)
def common_words(language: str, min_zipf: float = 3.0) -> frozenset[str]:
    """Words used at least once per million words of ``language`` (Zipf frequency >= 3).

    From ``wordfreq``'s lists, which ship inside its wheel (nothing is downloaded). A
    name that is also such a word (Bell, Rose, Hope, Will) is replaced only where the
    text shows it is a name; see :meth:`Vocabulary.is_common`. An unknown language gives
    an empty set (the rules fall back to the lemma vocabulary).
    """
    try:
        from wordfreq import top_n_list, zipf_frequency
    except ImportError:  # pragma: no cover - a declared dependency
        return frozenset()
    try:
        words = top_n_list(language, 100_000)
    except Exception:  # an unsupported language code
        return frozenset()
    out: set[str] = set()
    for w in words:  # sorted by frequency: stop at the threshold
        if zipf_frequency(w, language) < min_zipf:
            break
        out.add(fold(w).replace("’", "'"))
    return frozenset(out)


class Vocabulary:
    """The ordinary words of a language, with a per-word answer cache.

    Built from the spaCy model's lemma tables (WordNet's lemmas for English) and stop
    words. Those tables also list frequent names ("martin", "grace"): membership says a
    word *can* be ordinary, which is what deciding "probably a name" needs. ``common``
    (a frequency list, :func:`common_words`) says a word is *used* as a word often enough
    that seeing it proves nothing: "bell", "rose", "everybody", "didn't".
    """

    def __init__(
        self,
        words: frozenset[str],
        stop: frozenset[str] = frozenset(),
        common: frozenset[str] = frozenset(),
        frequent: frozenset[str] = frozenset(),
    ) -> None:
        self.words = words | stop
        self.stop = stop
        self.common = common
        self.frequent = frequent
        self._cache: dict[str, bool] = {}
        self._common_cache: dict[str, bool] = {}

    def is_wordlike(self, word: str) -> bool:
        """Whether a name is above all a word: a dictionary word used about 30 times
        per million words, Zipf >= 4.5 (Bell, Rose, Young, Grant, Hope, May, Mark, Will,
        Page, Long).

        Such a name, found alone, is replaced only in a name context (see the text
        operator); "Serge" or "Derek" (rare as words) are names wherever they stand.
        """
        return fold(word) in self.frequent and self.is_ordinary(word)

    def is_common(self, word: str) -> bool:
        """Whether ``word`` is a frequent word of the language (any case, contractions)."""
        got = self._common_cache.get(word)
        if got is None:
            w = fold(word).replace("’", "'")
            got = w in self.common or _contraction(w, self.common) or _contraction(w, self.words)
            if not got and w.endswith("'s"):
                got = w[:-2] in self.common
            if len(self._common_cache) < 200_000:
                self._common_cache[word] = got
        return got

    def is_known(self, word: str) -> bool:
        """Ordinary (lemma tables) or common (frequency list): no evidence of a name."""
        return self.is_ordinary(word) or self.is_common(word)

    def __bool__(self) -> bool:
        return bool(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def is_ordinary(self, word: str) -> bool:
        """Whether ``word`` (any case, simple inflections, hyphenated) is ordinary."""
        got = self._cache.get(word)
        if got is None:
            got = self._lookup(word)
            if len(self._cache) < 200_000:
                self._cache[word] = got
        return got

    def _lookup(self, word: str) -> bool:
        w = fold(word).replace("’", "'")
        if _contraction(w, self.words):
            return True
        if w.endswith("'s"):
            w = w[:-2]
        if "-" in w:
            w = w.rsplit("-", 1)[1]
        if w in self.words:
            return True
        for suffix, repl in _SUFFIXES:
            stem = len(w) - len(suffix)
            if w.endswith(suffix) and stem >= 3 and w[:stem] + repl in self.words:
                return True
        return False


def _contraction(w: str, words: frozenset[str]) -> bool:
    """Whether a folded word is a contraction of a known word ("didn't", "i'd", "we'll")."""
    m = _CONTRACTION.match(w)
    if m is None:
        return False
    base = m["base"]
    return base in words or base in _CONTRACTED or (w.endswith("n't") and base + "n" in words)


def is_dictionary_word(word: str, vocabulary: Vocabulary) -> bool:
    """Whether ``word`` is an ordinary word of the language (see :class:`Vocabulary`)."""
    return vocabulary.is_ordinary(word)


def trim_ordinary(words: list[Any], vocabulary: Vocabulary) -> list[Any]:
    """Drop ordinary words from the ends of a lower-case name candidate, keeping two.

    "anacleto anguiano asked" -> "anacleto anguiano", "call ruairi newman back" ->
    "ruairi newman", but "jillian newman" stays whole although "newman" is also a word:
    a lower-case name has at least two words. ``words`` are regex matches.
    """
    run = list(words)
    while len(run) > 2:
        left = _droppable(run[0].group(), vocabulary)
        right = _droppable(run[-1].group(), vocabulary)
        if max(left, right) < 0:
            break
        if left > right:
            run.pop(0)
        else:  # a name more often opens a sentence than ends it: "alexia matos wore"
            run.pop()
    return run


def _droppable(word: str, vocabulary: Vocabulary) -> int:
    """How surely a word at the edge of a lower-case name candidate is not part of it:
    a stop word (2), an inflected verb-like word (1), another ordinary word (0), or an
    unknown word (-1, kept)."""
    if fold(word) in vocabulary.stop:
        return 2
    if not vocabulary.is_ordinary(word):
        return -1
    return 1 if word.endswith(("ed", "ing")) else 0


def model_dir(model: str) -> Path | None:
    """The data directory of an installed spaCy model (holds config.cfg), if found."""
    if Path(model).is_dir():
        return Path(model)
    spec = importlib.util.find_spec(model) if model.isidentifier() else None
    if spec is None or spec.origin is None:
        return None
    pkg = Path(spec.origin).parent
    # a spaCy model package holds its data in "<name>-<version>/" (config.cfg inside)
    for cfg in sorted(pkg.glob("*/config.cfg")):
        return cfg.parent
    return pkg if (pkg / "config.cfg").exists() else None


@lru_cache(maxsize=8)
def load_vocabulary(model: str, language: str) -> Vocabulary:
    """The ordinary words for a model: its lemmatizer's tables plus the stop words.

    Read from the model directory without loading the pipeline. A model without lemma
    tables gives an empty vocabulary, which turns the vocabulary-based heuristics off
    (names are then found by NER, patterns and the lexicon only).
    """
    words: set[str] = set()
    folder = model_dir(model)
    lookups_dir = folder / "lemmatizer" / "lookups" if folder is not None else None
    if lookups_dir is not None and (lookups_dir / "lookups.bin").exists():
        from spacy.lookups import Lookups

        lookups = Lookups().from_disk(lookups_dir)
        for name in ("lemma_index", "lemma_exc", "lemma_lookup"):
            if not lookups.has_table(name):
                continue
            table = lookups.get_table(name)
            for key in table:
                value = table[key]
                if isinstance(value, dict):
                    words.update(k for k in value if isinstance(k, str))
                elif isinstance(value, list | tuple | set):
                    words.update(w for w in value if isinstance(w, str))
    if not words:
        return Vocabulary(frozenset())
    stop: set[str] = set()
    try:
        from spacy.util import get_lang_class

        # function words are not in the lemma tables (WordNet has no prepositions)
        stop.update(get_lang_class(language).Defaults.stop_words)
    except Exception:  # an unknown language code: the lemma tables alone
        pass
    return Vocabulary(
        frozenset(w.lower() for w in words),
        frozenset(w.lower() for w in stop),
        common_words(language),
        common_words(language, 4.5),
    )


_CALENDAR_WORDS = """
january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday
"""
_CALENDAR = frozenset(_CALENDAR_WORDS.split())
# tokens with a digit or an '@' (ids, phones, e-mails) hold no name words for NER to find
_CODED = regex.compile(r"\S*[@\d]\S*")


def needs_ner(text: str, covered: list[tuple[int, int]], vocabulary: Vocabulary) -> bool:
    """Whether the NER model could find a name in ``text`` that nothing else has found.

    biomask drops NER names that are one ordinary word at the start of a sentence, and
    lower-case spans of ordinary words only (:meth:`TextEngine._refine_ner`), so a text
    in which every word outside ``covered`` (spans already found, e.g. the job's known
    names) is such a word, an ordinary lower-case word, a month or an acronym, gives NER
    nothing to add: boilerplate sentences and sentences about known people skip the
    model, which is most of the time spent. With no vocabulary, always True.
    """
    if not vocabulary:
        return True
    spans = sorted(covered) + [m.span() for m in _CODED.finditer(text)]
    for m in WORDS.finditer(text):
        a = m.start()
        if any(x <= a < y for x, y in spans):
            continue
        w = m.group()
        if len(w) < 2:
            continue
        if w[0].isupper():
            if (w.isupper() and len(w) <= 4) or fold(w) in _CALENDAR:
                continue
            if vocabulary.is_ordinary(w) and sentence_start(text, a):
                continue
            return True
        if len(w) >= 3 and not vocabulary.is_ordinary(w):
            return True
    return False


# -- value shapes (for the policy suggester; no Presidio needed) ---------------------------

#: A whole value that is an e-mail address.
EMAIL_RE = regex.compile(r"[\w.+\-'!#$%&*/=?^`{|}~]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,63}")
#: A whole value shaped like an ICAO 9303 document number (check with :func:`icao_valid`).
ICAO_RE = regex.compile(r"(?=[A-Z0-9<]*\d)[A-Z0-9<]{8}\d")


def icao_check_digit(body: str) -> int:
    """ICAO 9303 check digit of ``body`` as an int (:func:`biomask.masking.checkdigits`)."""
    return int(_icao_check_digit(body))


def icao_valid(value: str) -> bool:
    """Whether a 9-character value ends with the ICAO check digit of its first eight."""
    v = value.strip()
    return len(v) == 9 and v[8].isdigit() and icao_check_digit(v[:8]) == int(v[8])


_PHONE_VALUE = regex.compile(r"(?:\+|00)?[\d][\d ()./\-]{5,22}\d")


def looks_like_phone(value: str) -> bool:
    """A whole value of 7-15 digits with phone separators (or a + / 00 prefix)."""
    v = value.strip()
    if _PHONE_VALUE.fullmatch(v.lstrip("(")) is None:
        return False
    digits = sum(c.isdigit() for c in v)
    return 7 <= digits <= 15 and (v.startswith(("+", "00", "0", "(")) or not v.isdigit())


def unbalanced_close(value: str) -> bool:
    """Whether a matched number ends with a ')' that it did not open."""
    return value.endswith(")") and value.count(")") > value.count("(")
