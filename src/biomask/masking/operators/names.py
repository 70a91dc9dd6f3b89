"""The pseudonym operator: consistent, realistic person names.

Each *name part* is replaced on its own: given names by a given name and family names by a
family name, chosen from lists shipped with biomask by a keyed PRF over the normalized part
(case-folded, accents removed). That is what lets every spelling of one person agree:
"Isabel Petrosyan", "PETROSYAN, Isabel", "Ms Petrosyan" and "I. Petrosyan" map to the same
given and family pseudonyms, each in the shape (case, order, punctuation) it was written
in, and free-text detections reuse the same mapping. The cost is that two people who share
a family name share its pseudonym, as they would in any surname-consistent scheme.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib import resources

import numpy as np
import pyarrow as pa

from biomask.keys.primitives import DeterministicPrf
from biomask.masking.registry import Binding, Operator, OperatorContext, map_distinct, register
from biomask.policies.models import PseudonymOp

__all__ = ["FAMILY", "GIVEN", "NameMapper", "Pseudonym", "normalize_name", "split_name"]

GIVEN, FAMILY, INITIAL = "g", "f", "i"
TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "miss",
        "mx",
        "dr",
        "prof",
        "sir",
        "madam",
        "mr/ms",
        "mrs/ms",
        "herr",
        "frau",
    }
)
_FOLD = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"})
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*\.?", re.UNICODE)


@lru_cache(maxsize=1)
def _lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    base = resources.files("biomask.masking") / "data"
    given = tuple(
        ln.strip()
        for ln in (base / "given_names.txt").read_text("utf-8").splitlines()
        if ln.strip()
    )
    family = tuple(
        ln.strip()
        for ln in (base / "family_names.txt").read_text("utf-8").splitlines()
        if ln.strip()
    )
    return given, family


def normalize_name(part: str) -> str:
    """Case-folded, accent-free form of a name part: the PRF's input."""
    decomposed = unicodedata.normalize("NFKD", part.casefold().translate(_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip(".")


def split_name(value: str) -> list[tuple[int, int, str]]:
    """Spans of name words in a full-name string with their role.

    Returns
    -------
    list of (start, end, role)
        role is GIVEN, FAMILY or INITIAL; titles ("Ms", "Dr.") are not returned and stay.
        "Family, Given" order is recognized by the comma; otherwise the last word is the
        family name.
    """
    all_words = list(_WORD.finditer(value))
    words = [m for m in all_words if normalize_name(m.group()) not in TITLES]
    titled = len(words) < len(all_words)
    if not words:
        return []
    comma = value.find(",")
    out: list[tuple[int, int, str]] = []
    for i, m in enumerate(words):
        text = m.group().rstrip(".")
        if len(text) == 1:
            role = INITIAL
        elif comma >= 0:
            role = FAMILY if m.start() < comma else GIVEN
        else:
            role = FAMILY if i == len(words) - 1 and len(words) > 1 else GIVEN
        out.append((m.start(), m.start() + len(text), role))
    if comma < 0 and len(words) == 1 and out[0][2] != INITIAL:
        # a lone word is a family name after a title ("Ms Petrosyan"), else a given name
        out[0] = (out[0][0], out[0][1], FAMILY if titled else GIVEN)
    return out


def _shape_case(src: str, name: str) -> str:
    if src.isupper() and len(src) > 1:
        return name.upper()
    if src.islower():
        return name.lower()
    return name


class NameMapper:
    """Maps (role, name part) pairs to pseudonym parts, batched through one PRF call."""

    def __init__(self, prf: DeterministicPrf) -> None:
        self.prf = prf
        self.given, self.family = _lists()

    def map_parts(self, parts: list[tuple[str, str]]) -> list[str]:
        """Pseudonyms for (role, text) pairs, in the case shape of each text.

        An INITIAL maps to the first letter of the given-name pseudonym of that letter; the
        text operator, which knows the full name, uses the given name's initial instead.
        """
        if not parts:
            return []
        keys = sorted({(r if r != INITIAL else GIVEN, normalize_name(t)) for r, t in parts})
        idx = self.prf.integers([f"{r}:{n}".encode() for r, n in keys], 1 << 30)
        chosen: dict[tuple[str, str], str] = {}
        for (r, n), k in zip(keys, idx.tolist(), strict=True):
            pool = self.family if r == FAMILY else self.given
            chosen[(r, n)] = pool[k % len(pool)]
        out = []
        for r, t in parts:
            if r == INITIAL:
                out.append(_shape_case(t, chosen[(GIVEN, normalize_name(t))][0]))
            else:
                out.append(_shape_case(t, chosen[(r, normalize_name(t))]))
        return out

    def full_names(self, values: list[str]) -> list[str]:
        """Pseudonymize whole name strings, keeping titles, order, commas and case."""
        spans = [split_name(v) for v in values]
        parts = [(role, v[a:b]) for v, sp in zip(values, spans, strict=True) for a, b, role in sp]
        mapped = iter(self.map_parts(parts))
        out: list[str] = []
        for v, sp in zip(values, spans, strict=True):
            pieces: list[str] = []
            last = 0
            for a, b, _ in sp:
                pieces.append(v[last:a])
                pieces.append(next(mapped))
                last = b
            pieces.append(v[last:])
            out.append("".join(pieces))
        return out


@register
class Pseudonym(Operator[PseudonymOp]):
    """Consistent realistic names per domain."""

    name = "pseudonym"

    def __init__(self, spec: PseudonymOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.mapper = NameMapper(DeterministicPrf(binding.keyring.derive("pseudonym", spec.domain)))

    @property
    def key_id(self) -> str | None:
        return self.mapper.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        ok = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
        return None if ok else "pseudonym takes string columns"

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        def fn(uniq: pa.Array) -> pa.Array:
            vals = uniq.to_pylist()
            out = self.mapper.full_names(vals)
            # a value with no name words at all (digits, symbols) must not pass through
            empty = np.array([not split_name(v) and v.strip() != "" for v in vals], dtype=bool)
            if empty.any():
                out = ["[REDACTED]" if e else o for o, e in zip(out, empty, strict=True)]
            return pa.array(out, pa.string())

        return map_distinct(values, fn).cast(values.type)
