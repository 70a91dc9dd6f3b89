"""Measuring a text masker against ground truth: PII that survived, words it broke.

Used by the tests and ``bench/text.py`` on the demo's notes (``biomask.demo.generate``
plants PII and records every planted string), and usable on any labelled sample.

* **Survival**: a PII string survives when it still occurs in the masked note as a whole
  word sequence (case-sensitive, as written). One missed mention of a name counts once.
* **Non-PII words changed**: the words of the original note outside its PII strings, as a
  multiset, minus the words of the masked note; what is missing was changed. An initial
  written before a PII name ("J. Smith") counts as part of the name, since masking it is
  intended (the pseudonym's initial replaces it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["TextQuality", "measure"]

_WORD = re.compile(r"\w+")


@dataclass
class TextQuality:
    """How well a masker did on labelled notes."""

    pii: int = 0
    survived: int = 0
    words: int = 0
    words_changed: int = 0
    pii_by_kind: Counter[str] = field(default_factory=Counter)
    survived_by_kind: Counter[str] = field(default_factory=Counter)
    #: (kind, PII string, note index) of each survivor, for a report
    survivors: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def survival(self) -> float:
        """Fraction of PII strings still in the masked notes."""
        return self.survived / self.pii if self.pii else 0.0

    @property
    def changed(self) -> float:
        """Fraction of non-PII words that masking changed."""
        return self.words_changed / self.words if self.words else 0.0

    def summary(self) -> str:
        """One line: survival and changed words."""
        return (
            f"PII survived {self.survived}/{self.pii} ({self.survival:.2%}); non-PII words "
            f"changed {self.words_changed}/{self.words} ({self.changed:.2%})"
        )


def _occurs(needle: str, hay: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", hay) is not None


def measure(
    originals: Sequence[str | None],
    masked: Sequence[str | None],
    pii: Sequence[Sequence[str]],
    kinds: Sequence[Sequence[str]],
) -> TextQuality:
    """Compare masked notes with the originals and their planted PII strings."""
    q = TextQuality()
    for i, (orig, out, strings, ks) in enumerate(zip(originals, masked, pii, kinds, strict=True)):
        if orig is None:
            continue
        out = out or ""
        for s, k in zip(strings, ks, strict=True):
            q.pii += 1
            q.pii_by_kind[k] += 1
            if _occurs(s, out):
                q.survived += 1
                q.survived_by_kind[k] += 1
                q.survivors.append((k, s, i))
        rest = orig
        for s in sorted(set(strings), key=len, reverse=True):
            rest = re.sub(r"(?<!\w)(?:\w\. )?" + re.escape(s) + r"(?!\w)", " ", rest)
        before = Counter(_WORD.findall(rest))
        q.words += sum(before.values())
        q.words_changed += sum((before - Counter(_WORD.findall(out))).values())
    return q
