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
import pyarrow.compute as pc

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
        out: list[str] = self.full_names_array(pa.array(values, pa.string())).to_pylist()
        return out

    def full_names_array(self, values: pa.Array) -> pa.Array:
        """Pseudonymize a null-free string array of full names, vectorized.

        Names are split into space-separated pieces with Arrow; the Python work runs once
        per distinct *piece* (the name vocabulary, a few thousand words even for millions of
        people), and roles (given, family, initial) are assigned per piece with numpy from
        its position, the value's comma and its title.
        """
        n = len(values)
        pieces = pc.split_pattern(values, " ")
        flat = pc.list_flatten(pieces)
        parent = pc.list_parent_indices(pieces).to_numpy()
        offsets = pieces.offsets.to_numpy()
        pos = np.arange(len(flat)) - offsets[parent]
        enc = flat.dictionary_encode()
        vocab: list[str] = enc.dictionary.to_pylist()
        idx = enc.indices.to_numpy()
        kinds = np.array([_piece_kind(p) for p in vocab] or [0], dtype=np.int8)
        commas = np.array([("," in p) for p in vocab] or [False], dtype=bool)
        kind = kinds[idx]
        is_part = kind >= _INITIAL_PIECE
        big = np.iinfo(np.int64).max
        nparts = np.bincount(parent[is_part], minlength=n)
        titled = np.bincount(parent[kind == _TITLE_PIECE], minlength=n) > 0
        comma_pos = np.full(n, big)
        hit = commas[idx] & is_part
        np.minimum.at(comma_pos, parent[hit], pos[hit])
        last_pos = np.full(n, -1)
        np.maximum.at(last_pos, parent[is_part], pos[is_part])
        role = np.full(len(flat), -1, dtype=np.int8)  # -1: keep the piece
        word = kind == _WORD_PIECE
        has_comma = comma_pos[parent] != big
        fam = np.where(
            has_comma,
            pos <= comma_pos[parent],
            np.where(nparts[parent] > 1, pos == last_pos[parent], titled[parent]),
        )
        role[word] = np.where(fam[word], _ROLE_FAMILY, _ROLE_GIVEN)
        role[kind == _INITIAL_PIECE] = _ROLE_INITIAL
        # one replacement per distinct (piece, role)
        combo = idx.astype(np.int64) * 4 + role
        todo = np.unique(combo[role >= 0])
        words_of = [(int(c) // 4, int(c) % 4) for c in todo]
        roles = (GIVEN, FAMILY, INITIAL)
        parts = [
            (roles[r], m.group().rstrip(".")) for v, r in words_of for m in _WORD.finditer(vocab[v])
        ]
        mapped = iter(self.map_parts(parts))
        replaced: list[str] = []
        for v, _r in words_of:
            replaced.append(_WORD.sub(lambda m: _keep_dot(m.group(), next(mapped)), vocab[v]))
        out_vocab = pa.array([*vocab, *replaced], pa.string())
        sel = idx.astype(np.int64).copy()
        if len(todo):
            sel[role >= 0] = len(vocab) + np.searchsorted(todo, combo[role >= 0])
        out_flat = out_vocab.take(pa.array(sel))
        joined = pc.binary_join(
            pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), out_flat), " "
        )
        empty = (nparts == 0) & (pc.utf8_length(pc.utf8_trim_whitespace(values)).to_numpy() > 0)
        if empty.any():  # a value with no name words at all must not pass through
            joined = pc.if_else(pa.array(empty), pa.scalar("[REDACTED]"), joined)
        return joined


_KEEP_PIECE, _TITLE_PIECE, _INITIAL_PIECE, _WORD_PIECE = 0, 1, 2, 3
_ROLE_GIVEN, _ROLE_FAMILY, _ROLE_INITIAL = 0, 1, 2


def _piece_kind(piece: str) -> int:
    words = [m.group() for m in _WORD.finditer(piece)]
    if not words:
        return _KEEP_PIECE
    if all(normalize_name(w) in TITLES for w in words):
        return _TITLE_PIECE
    if len(words) == 1 and len(words[0].rstrip(".")) == 1:
        return _INITIAL_PIECE
    return _WORD_PIECE


def _keep_dot(src: str, new: str) -> str:
    return new + "." if src.endswith(".") else new


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
        return map_distinct(values, self.mapper.full_names_array).cast(values.type)
