"""Presidio recognizers for what enrolment notes hold and Presidio's defaults miss.

Each class is an ordinary :class:`presidio_analyzer.EntityRecognizer`, so a Presidio user
can add them to their own ``RecognizerRegistry``. They do their own context checks on the
raw text (a window of characters before the match) instead of relying on lemma-based
context enhancement, because biomask runs spaCy without its tagger and lemmatizer (only
the NER component) to make detection fast; their ``context`` lists are therefore empty.

Why each one exists:

* :class:`InternationalPhoneRecognizer` -- Presidio's phone recognizer asks
  ``phonenumbers`` for a fixed list of regions and misses most international numbers
  written with spaces and parentheses (``+44 20 7946 0958``, ``+1 (202) 555-0143``) and
  national numbers of other countries (``020 7946 0958``, ``(11) 91234-5678``).
* :class:`IcaoDocumentRecognizer` -- passport numbers (ICAO 9303: 9 characters, the last a
  check digit) have no Presidio recognizer outside a few national formats; the check
  digit keeps false positives rare, the context word ("passport", "document") makes the
  rest safe.
* :class:`OfflineEmailRecognizer` -- Presidio's e-mail recognizer validates the domain with
  ``tldextract``, which downloads the public-suffix list over HTTP on first use and rejects
  reserved names such as ``enrol.example`` (used in signatures); this one validates the
  shape of the domain locally and never touches the network.
* :class:`TitledNameRecognizer`, :class:`InitialNameRecognizer`,
  :class:`CommaNameRecognizer`, :class:`SignatureNameRecognizer` -- name shapes that a
  small NER model misses in short, list-like notes: "Ms Petrosyan", "J. Smith",
  "PETROSYAN, Isabel", and a name on the line after a ``-- `` signature delimiter.
* :class:`CapitalizedNameRecognizer` -- names the model has never seen ("Somtochukwu
  Olaiya", "UYÊN LÂM", "jan kowalczyk"): capitalized or lower-case runs with a word that
  is not in the language's vocabulary (the model's own lemma tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import regex
from presidio_analyzer import LocalRecognizer, Pattern, PatternRecognizer, RecognizerResult

from biomask.masking.text.words import (
    ROLE_NOUNS,
    STOP,
    WORDS,
    Vocabulary,
    fold,
    icao_check_digit,
    sentence_start,
    trim_ordinary,
    unbalanced_close,
)

__all__ = [
    "CapitalizedNameRecognizer",
    "CommaNameRecognizer",
    "IcaoDocumentRecognizer",
    "InitialNameRecognizer",
    "InternationalPhoneRecognizer",
    "LuhnCardRecognizer",
    "OfflineEmailRecognizer",
    "SignatureNameRecognizer",
    "TitledNameRecognizer",
    "UkNinoRecognizer",
    "UsSsnRecognizer",
    "biomask_recognizers",
    "icao_check_digit",
    "luhn_valid",
]

_FLAGS = regex.MULTILINE


def _meta(rec: Any) -> dict[str, Any]:
    return {
        RecognizerResult.RECOGNIZER_NAME_KEY: rec.name,
        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: rec.id,
    }


def _has_context(text: str, start: int, end: int, words: regex.Pattern[str]) -> bool:
    """Whether a context word occurs shortly before (64 chars: room for a name, as in
    "contact number given by Manuela Mafalda Oliveira: ...") or after (24) a match."""
    return bool(words.search(text, max(0, start - 64), start)) or bool(
        words.search(text, end, min(len(text), end + 24))
    )


class _RegexRecognizer(LocalRecognizer):
    """A recognizer driven by compiled ``regex`` patterns and a scoring hook.

    Subclasses set ``ENTITY`` and ``PATTERN`` (one pattern, possibly with a ``v`` group
    for the value span) and implement :meth:`score`; returning None drops the match.
    """

    ENTITY: str = ""
    PATTERN: regex.Pattern[str]

    def __init__(self, supported_language: str = "en", name: str | None = None) -> None:
        super().__init__(
            supported_entities=[self.ENTITY],
            supported_language=supported_language,
            name=name or type(self).__name__,
            context=[],
        )

    def load(self) -> None:
        pass

    def score(self, text: str, start: int, end: int) -> float | None:
        raise NotImplementedError

    def span(self, text: str, start: int, end: int) -> tuple[int, int]:
        """Adjust a match's span before scoring (default: as matched)."""
        return start, end

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        """Presidio entry point: every pattern match that :meth:`score` accepts."""
        if entities and self.ENTITY not in entities:
            return []
        out: list[RecognizerResult] = []
        for m in self.PATTERN.finditer(text):
            start, end = m.span("v") if "v" in self.PATTERN.groupindex else m.span()
            if start < 0:
                continue
            start, end = self.span(text, start, end)
            s = self.score(text, start, end)
            if s is not None and s > 0:
                out.append(
                    RecognizerResult(self.ENTITY, start, end, s, recognition_metadata=_meta(self))
                )
        return out


# -- phones --------------------------------------------------------------------------------

_PHONE_CONTEXT = regex.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|called|calls|contact|number|reached|"
    r"reach|sms|text|whatsapp|fax|ring|landline)\b"
)
_EXTENSION = regex.compile(r"[ \t]?(?:x|ext\.?|extension)[ \t]?\d{1,6}$")
# (921)913-5499, 921-913-5499, 926.346.8941, (921) 913 5499, 1-921-913-5499
_NANP = regex.compile(r"(?:1[\-. ])?(?:\(\d{3}\)[ \-.]?|\d{3}[\-. ])\d{3}[\-. ]\d{4}")
_DATE_LIKE = regex.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


class InternationalPhoneRecognizer(_RegexRecognizer):
    """Phone numbers in international (+CC / 00CC) and national formats.

    Scores: an international prefix with 8-15 digits is a phone (0.85); a trunk-prefixed
    national number (``0...``, 9-12 digits) nearly always is (0.6); grouped digits without
    either need a context word ("call", "mobile", "contact"...) nearby (0.3 alone, below the
    default threshold; 0.75 with context).
    """

    ENTITY = "PHONE_NUMBER"
    PATTERN = regex.compile(
        r"(?<![\w+@./\-])(?P<v>(?:\+|00)?\(?\d{1,5}+\)?(?:[\ \-./]?\(?\d{1,5}+\)?){1,7}+"
        r"(?:[ \t]?(?:x|ext\.?|extension)[ \t]?\d{1,6})?)"
        r"(?![\w@]|[.\-]\d)",
        _FLAGS,
    )

    def span(self, text: str, start: int, end: int) -> tuple[int, int]:
        """Leave out a bracket that closes around the number: "(... +44 20 7946 0958)"."""
        return start, end - 1 if unbalanced_close(text[start:end]) else end

    def score(self, text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        ext = _EXTENSION.search(value)
        if ext is not None:  # "210-814-3552x249": the extension says "phone" by itself
            value = value[: ext.start()]
        if "  " in value or value.count("(") != value.count(")"):
            return None
        digits = sum(c.isdigit() for c in value)
        if value.startswith("+") or value.startswith("00"):
            return 0.85 if 8 <= digits <= 15 else None
        if not 7 <= digits <= 12 or _DATE_LIKE.match(value):
            return None
        first = value.lstrip("(")
        if first.startswith("0") and digits >= 9:
            return 0.6
        if _NANP.fullmatch(value):
            return 0.7 if ext is not None else 0.6  # North American layout
        if ext is not None and digits >= 7:
            return 0.6
        if not any(not c.isdigit() for c in value) and digits < 9:
            return None  # a bare short number: a count, an amount, a code
        return 0.75 if _has_context(text, start, end, _PHONE_CONTEXT) else 0.3


# -- payment cards and national identifiers -------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn check (every payment card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class LuhnCardRecognizer(_RegexRecognizer):
    """Card numbers of every length (13-19 digits), grouped by spaces or dashes or not.

    Presidio's card recognizer knows the classic brands' lengths and prefixes; JCB,
    2-series Mastercard, UnionPay and Maestro numbers (15-19 digits, often unseparated)
    slip through it. A number here starts with 2-6 (the issuer ranges of cards), uses one
    separator throughout, and must pass the Luhn check: 1 in 10 random numbers would, so
    a plain run of digits also needs 15 or more of them.
    """

    ENTITY = "CREDIT_CARD"
    PATTERN = regex.compile(
        r"(?<![\w\-+.])(?P<v>[2-6]\d{3}(?:(?P<sep>[ \-]?)\d{2,6}){2,4}+)(?![\w\-]|\.\d)",
        _FLAGS,
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        seps = {c for c in value if not c.isdigit()}
        if len(seps) > 1:
            return None
        digits = "".join(c for c in value if c.isdigit())
        if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
            return None
        if not seps and len(digits) < 15:
            return None
        return 0.9


_SSN_CONTEXT = regex.compile(r"(?i)\b(?:ssn|ssns|social security|social sec|ss#|ss no)\b")


class UsSsnRecognizer(_RegexRecognizer):
    """US social security numbers: ``123-45-6789`` (or with spaces) is unambiguous enough
    alone when its area, group and serial are valid (no 000, 666 or 9xx area, no 00
    group, no 0000 serial); nine plain digits need "SSN" or "social security" nearby."""

    ENTITY = "US_SSN"
    PATTERN = regex.compile(
        r"(?<![\w\-+./])(?P<v>\d{3}(?P<sep>[\- ]?)\d{2}(?P=sep)\d{4})(?![\w\-]|[./]\d)", _FLAGS
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        digits = "".join(c for c in value if c.isdigit())
        area, group, serial = digits[:3], digits[3:5], digits[5:]
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            return None
        if value.isdigit():
            return 0.8 if _has_context(text, start, end, _SSN_CONTEXT) else None
        return 0.85


class UkNinoRecognizer(_RegexRecognizer):
    """UK National Insurance numbers (``QQ 12 34 56 C``): two letters from the issued
    prefixes, six digits, a suffix A-D; unambiguous without a context word."""

    ENTITY = "UK_NINO"
    PATTERN = regex.compile(
        r"(?<![\w\-])(?P<v>(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
        r"(?P<sep>[ ]?)\d{2}(?P=sep)\d{2}(?P=sep)\d{2}(?P=sep)[A-D])(?![\w\-])",
        _FLAGS,
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        return 0.85


# -- travel documents ----------------------------------------------------------------------

_DOC_CONTEXT = regex.compile(
    r"(?i)\b(?:passport|passports|document|documents|doc|travel|mrz|visa|permit|identity|"
    r"id|card)\b"
)


class IcaoDocumentRecognizer(_RegexRecognizer):
    """Travel-document numbers: 6-12 upper-case letters/digits with at least one digit.

    A 9-character number whose last digit is the ICAO 9303 check digit of the first eight
    scores 0.95 next to a context word ("passport", "document") and 0.6 without one (1 in
    10 random strings pass the check, but few words are 9 upper-case characters with a
    digit); any other shape needs the context word (0.5).
    """

    ENTITY = "DOCUMENT_NUMBER"
    PATTERN = regex.compile(
        r"(?<![\w\-/])(?P<v>(?=[A-Z0-9<]*\d)[A-Z0-9<]{6,12})(?![\w\-/])", _FLAGS
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        context = _has_context(text, start, end, _DOC_CONTEXT)
        valid = (
            len(value) == 9 and value[8].isdigit() and icao_check_digit(value[:8]) == int(value[8])
        )
        if valid:
            if context:
                return 0.95
            return 0.6 if not value.isdigit() else 0.3
        if context and sum(c.isdigit() for c in value) >= 2:
            return 0.5
        return None


# -- e-mail ----------------------------------------------------------------------------------

_TLD = regex.compile(r"^(?:[^\W\d_]{2,63}|xn--[a-z0-9\-]{2,59})$", regex.IGNORECASE)


class OfflineEmailRecognizer(PatternRecognizer):
    """Presidio's e-mail pattern with a local domain check instead of ``tldextract``.

    ``tldextract`` fetches the public-suffix list over HTTP the first time it runs and
    treats reserved or private suffixes (``.example``, ``.internal``) as invalid; an
    address in a signature at ``ops.example.net`` or ``enrol.example`` is still an address.
    """

    PATTERNS = [  # noqa: RUF012  (Presidio's own class attribute convention)
        Pattern(
            "Email (offline)",
            r"\b((([!#$%&'*+\-/=?^_`{|}~\w])|([!#$%&'*+\-/=?^_`{|}~\w][!#$%&'*+\-/=?^_`{|}~\.\w]"
            r"{0,}[!#$%&'*+\-/=?^_`{|}~\w]))[@]\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+)\b",
            0.5,
        ),
    ]

    def __init__(self, supported_language: str = "en", name: str | None = None) -> None:
        super().__init__(
            supported_entity="EMAIL_ADDRESS",
            patterns=list(self.PATTERNS),
            context=[],
            supported_language=supported_language,
            name=name or "OfflineEmailRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        """Valid when the domain has a dot and an alphabetic (or punycode) last label."""
        _, _, domain = pattern_text.rpartition("@")
        labels = domain.split(".")
        return len(labels) >= 2 and all(labels) and bool(_TLD.match(labels[-1]))


# -- names ----------------------------------------------------------------------------------

_NAME = r"\p{Lu}[\p{Ll}\p{Lm}]+(?:['’\-]\p{Lu}?[\p{Ll}\p{Lm}]+)*"
_UPPER_NAME = r"\p{Lu}{2,}(?:['’\-]\p{Lu}+)*"
_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Herr|Frau|Mme|Mlle|Sr|Sra)"


class TitledNameRecognizer(_RegexRecognizer):
    """A title followed by one or two capitalized words: "Ms Petrosyan", "Dr. Jan Kowal"."""

    ENTITY = "PERSON"
    PATTERN = regex.compile(
        rf"(?<!\w)(?P<v>{_TITLE}\.?\ +(?:\p{{Lu}}\.\ ?)?(?:{_NAME}|{_UPPER_NAME})"
        rf"(?:\ (?:{_NAME}|{_UPPER_NAME}))?)(?!\w)",
        _FLAGS,
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        return 0.8


class InitialNameRecognizer(_RegexRecognizer):
    """An initial and a family name: "J. Smith", "J. SMITH"."""

    ENTITY = "PERSON"
    PATTERN = regex.compile(
        rf"(?<![\w.])(?P<v>\p{{Lu}}\.\ ?(?:{_NAME}|{_UPPER_NAME}))(?!\w)", _FLAGS
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        return 0.6


class CommaNameRecognizer(_RegexRecognizer):
    """Family name in capitals, a comma, a given name: "PETROSYAN, Isabel"."""

    ENTITY = "PERSON"
    PATTERN = regex.compile(rf"(?<!\w)(?P<v>{_UPPER_NAME},\ {_NAME})(?!\w)", _FLAGS)

    def score(self, text: str, start: int, end: int) -> float | None:
        return 0.7


class SignatureNameRecognizer(_RegexRecognizer):
    """The first line after a ``-- `` signature delimiter, when it looks like a name."""

    ENTITY = "PERSON"
    PATTERN = regex.compile(
        rf"^--\ ?\n\ *(?P<v>(?:{_NAME}|{_UPPER_NAME}|\p{{Lu}}\.)(?:\ (?:{_NAME}|{_UPPER_NAME}|"
        rf"\p{{Lu}}\.)){{0,3}})\ *$",
        _FLAGS,
    )

    def score(self, text: str, start: int, end: int) -> float | None:
        return 0.85


# -- proper names the model does not know ---------------------------------------------


class CapitalizedNameRecognizer(LocalRecognizer):
    """Capitalized words that are not words of the language: most likely names.

    A small NER model misses names it has never seen, most of all in notes that read like
    lists ("Checked by Somtochukwu Olaiya."). This recognizer takes

    * runs of two or more capitalized (or all-capital) words of which one is not in the
      model's vocabulary (0.6): "Somtochukwu Olaiya", "UYÊN LÂM";
    * "Family, Given" pairs of which one word is unknown (0.6): "Kober, Isolde";
    * a single unknown capitalized word (0.5 inside a sentence; 0.4 at its start, where a
      capital proves less);
    * two or three lower-case words with an unknown one (0.4): "jan kowal".

    Short all-capital ASCII words ("SMS", "ICAO") are acronyms, not names, unless they
    stand next to another capitalized word.
    """

    ENTITY = "PERSON"

    def __init__(
        self, vocabulary: Vocabulary, supported_language: str = "en", name: str | None = None
    ) -> None:
        super().__init__(
            supported_entities=[self.ENTITY],
            supported_language=supported_language,
            name=name or "CapitalizedNameRecognizer",
            context=[],
        )
        self.vocabulary = vocabulary

    def load(self) -> None:
        pass

    def _unknown(self, word: str, alone: bool = True) -> bool:
        if alone and word.isupper() and len(word) <= 4 and word.isascii():
            return False
        return not self.vocabulary.is_ordinary(word)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        """Presidio entry point (see the class docstring)."""
        if entities and self.ENTITY not in entities:
            return []
        words = list(WORDS.finditer(text))
        out: list[RecognizerResult] = []
        i = 0
        while i < len(words):
            w = words[i].group()
            if not (w[:1].isupper() and len(w) > 1):
                i += 1
                continue
            j = i
            while (
                j + 1 < len(words)
                and words[j + 1].group()[:1].isupper()
                and len(words[j + 1].group()) > 1
                and text[words[j].end() : words[j + 1].start()] == " "
            ):
                j += 1
            run = words[i : j + 1]
            while len(run) > 1 and fold(run[0].group()) in ROLE_NOUNS:
                run = run[1:]
            start, end, score = run[0].start(), run[-1].end(), 0.0
            if len(run) >= 2:
                if any(self._unknown(m.group(), alone=False) for m in run):
                    score = 0.6
            else:
                nxt = words[j + 1] if j + 1 < len(words) else None
                if (
                    nxt is not None
                    and text[run[0].end() : nxt.start()] == ", "
                    and nxt.group()[:1].isupper()
                    and len(nxt.group()) > 1
                    and (self._unknown(run[0].group()) or self._unknown(nxt.group()))
                ):
                    end, score = nxt.end(), 0.6
                    j += 1
                elif self._unknown(run[0].group()):
                    initial = sentence_start(text, run[0].start())
                    score = 0.4 if initial else 0.5
            if score:
                out.append(self._result(start, end, score))
            i = j + 1
        out.extend(self._lower_case_names(text, words))
        return out

    def _result(self, start: int, end: int, score: float) -> RecognizerResult:
        return RecognizerResult(self.ENTITY, start, end, score, recognition_metadata=_meta(self))

    def _lower_case_names(self, text: str, words: list[Any]) -> list[RecognizerResult]:
        """Two or three lower-case words in a row, none a stop word, one unknown (0.4):
        a name typed in a hurry ("handed over to jan kowal")."""
        out: list[RecognizerResult] = []
        i = 0
        while i < len(words):
            j = i
            while (
                j < len(words)
                and words[j].group().islower()
                and fold(words[j].group()) not in STOP
                and (j == i or text[words[j - 1].end() : words[j].start()] == " ")
            ):
                j += 1
            run = trim_ordinary(words[i:j], self.vocabulary)
            # a frequent word or a contraction ("everybody", "didn't") is no name typed
            # in lower case, whatever the lemma tables say
            if 2 <= len(run) <= 3 and any(
                self._unknown(m.group()) and not self.vocabulary.is_common(m.group()) for m in run
            ):
                out.append(self._result(run[0].start(), run[-1].end(), 0.4))
            i = max(j, i + 1)
        return out


def biomask_recognizers(
    language: str = "en", vocabulary: Vocabulary | None = None
) -> Sequence[LocalRecognizer]:
    """Fresh instances of every recognizer above, for one language.

    ``vocabulary`` (the language's ordinary words) enables
    :class:`CapitalizedNameRecognizer`; without one it is left out.
    """
    recognizers: list[LocalRecognizer] = [
        InternationalPhoneRecognizer(supported_language=language),
        LuhnCardRecognizer(supported_language=language),
        UsSsnRecognizer(supported_language=language),
        UkNinoRecognizer(supported_language=language),
        IcaoDocumentRecognizer(supported_language=language),
        OfflineEmailRecognizer(supported_language=language),
        TitledNameRecognizer(supported_language=language),
        InitialNameRecognizer(supported_language=language),
        CommaNameRecognizer(supported_language=language),
        SignatureNameRecognizer(supported_language=language),
    ]
    if vocabulary:
        recognizers.append(CapitalizedNameRecognizer(vocabulary, supported_language=language))
    return recognizers
