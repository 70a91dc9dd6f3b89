"""The known-value lexicon: values of linked domains seen in this job, as keyed hashes.

A name in ``subjects.full_name`` is the strongest evidence there is that the same word in
``captures.operator_notes`` is that person, whatever the NER model thinks of the sentence.
So before masking, the Masker declares the columns of every table whose rule's domain a
``text`` rule links to (``Masker.needs``), the pipeline reads them once and hands them
back (``Masker.prepare``, in the run's ``RunServices``), and their values are remembered
here; the text operator then finds them in notes in any case, accent and order ("Isabel
Petrosyan", "PETROSYAN, Isabel", "petrosyan").

The lexicon never holds plaintext. Every entry is 64 bits of a keyed PRF (AES CBC-MAC,
biomask's token PRF) under a random key made for this lexicon, of a normalized form:
name parts case-folded and accent-free, e-mails lower-cased, phones as their national
significant digits, other identifiers NFKC-upper-cased without separators. The key never
leaves memory, the lexicon refuses to be pickled and is never written anywhere, so it
cannot be used to test guesses outside the run. Name parts keep their role (given or
family) so that "Petrosyan" alone maps to the family pseudonym, and (family, initial)
pairs keep the *pseudonym's* initial so that "I. Petrosyan" becomes "K. Marlow".

Scale: entries live in sorted ``uint64`` arrays (8 bytes each, not a Python object), and
both building and lookups hash whole Arrow arrays of distinct values in one PRF call, so
a pre-pass over millions of subjects costs seconds, not minutes.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import DeterministicPrf
from biomask.masking.operators.names import (
    FAMILY,
    GIVEN,
    INITIAL,
    TITLES,
    NameMapper,
    normalize_name,
    split_name,
)
from biomask.masking.operators.tokens import phone_digits
from biomask.masking.registry import dictionary_encode, expand
from biomask.masking.text.words import fold as fold_word
from biomask.masking.text.words import sentence_start, unbalanced_close

__all__ = [
    "INITIAL",
    "KINDS",
    "ROLE_FAMILY",
    "ROLE_GIVEN",
    "LexHit",
    "Lexicon",
    "name_context",
    "role_of",
]

#: What a linked domain's values look like, by the column operator that masks them.
KINDS = ("name", "email", "phone", "token")
ROLE_GIVEN, ROLE_FAMILY = 1, 2
_ROLE_BITS = {GIVEN: ROLE_GIVEN, FAMILY: ROLE_FAMILY}

_WORD = regex.compile(r"[\p{L}\p{M}]+(?:['’][\p{L}\p{M}]+)*")
_EMAIL = regex.compile(r"[\w.+\-'!#$%&*/=?^`{|}~]+@[\w\-]+(?:\.[\w\-]+)+")
_PHONE = regex.compile(
    r"(?<![\w+@./\-])(?:\+|00)?\(?\d{1,5}+\)?(?:[ \-./]?\(?\d{1,5}+\)?){1,7}+(?![\w@]|[.\-]\d)"
)
# identifiers (document numbers, serials) have a digit; plain words are not looked up
_TOKEN = regex.compile(r"(?<![\w\-/])(?=[\w\-/]*\d)\w[\w\-/]{3,40}(?![\w\-/])")
# tokens with an '@' or a digit (e-mails, identifiers) hold no name words
_CODED = regex.compile(r"\S*[@\d]\S*")
_GAP = regex.compile(r"[ \t]{1,3}|,[ \t]{1,2}")
# a full name that is plain words: split by Arrow, roles by position (as split_name does)
_PLAIN_NAME = r"^[\pL\pM]+( [\pL\pM]+)*$"


class LexHit(NamedTuple):
    """A known value found in a text: offsets and the domain it belongs to.

    ``weak``: a known name that is also a common word, where nothing in the text says it
    is a name ("Hope" opening a sentence); it counts only when a detector agrees.
    """

    start: int
    end: int
    domain: str
    weak: bool = False


def role_of(bits: int) -> str | None:
    """The unique role in ``bits``, or None when unknown or ambiguous."""
    if bits == ROLE_GIVEN:
        return GIVEN
    if bits == ROLE_FAMILY:
        return FAMILY
    return None


def _strings(values: pa.Array) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return values


def _value_keys(kind: str, values: pa.Array) -> pa.Array:
    """Normalized keys of ``values`` (null: not a candidate), for one kind, vectorized."""
    values = _strings(values)
    if kind == "email":
        out = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        return pc.if_else(pc.equal(pc.utf8_length(out), 0), pa.scalar(None, pa.string()), out)
    if kind == "phone":
        if len(values) == 0:
            return values
        lay = phone_digits(values.fill_null(""))
        keys = lay.national()
        ok = ~lay.bad & (lay.per_value >= 5) & ~np.asarray(values.is_null(), dtype=bool)
        return pc.if_else(pa.array(ok), keys, pa.scalar(None, pa.string()))
    norm = pc.utf8_upper(pc.utf8_normalize(values, form="NFKC"))
    norm = pc.replace_substring_regex(norm, pattern=r"[^\pL\pN]+", replacement="")
    return pc.if_else(pc.less(pc.utf8_length(norm), 4), pa.scalar(None, pa.string()), norm)


@dataclass
class _Table:
    """Sorted uint64 keys with an optional uint32 payload, built from appended chunks."""

    chunks: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    vals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    merge: str = "or"  # how payloads of one key combine: "or" (role bits) or "same"

    def add(self, keys: np.ndarray, vals: np.ndarray | None = None) -> None:
        if len(keys):
            v = np.zeros(len(keys), np.uint32) if vals is None else vals.astype(np.uint32)
            self.chunks.append((keys.astype(np.uint64), v))

    def _finish(self) -> None:
        if not self.chunks:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self.chunks)])
        vals = np.concatenate([self.vals, *(v for _, v in self.chunks)])
        self.chunks.clear()
        order = np.lexsort((vals, keys))
        keys, vals = keys[order], vals[order]
        first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        if self.merge == "or":
            merged = np.bitwise_or.reduceat(vals, first) if len(vals) else vals
        else:  # one payload per key, 0 when the key has two different ones
            lo = vals[first]
            hi = np.maximum.reduceat(vals, first) if len(vals) else vals
            merged = np.where(lo == hi, lo, 0).astype(np.uint32)
        self.keys, self.vals = keys[first], merged.astype(np.uint32)

    def __len__(self) -> int:
        self._finish()
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, payload) per key."""
        self._finish()
        if len(self.keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), bool), np.zeros(len(keys), np.uint32)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[pos] == keys
        return found, np.where(found, self.vals[pos], 0).astype(np.uint32)


@dataclass
class Lexicon:
    """Keyed hashes of the known values of linked domains (see the module docstring).

    Attributes
    ----------
    kinds:
        Linked domain -> kind of its values (``name``, ``email``, ``phone``, ``token``).
    prepared:
        Whether the pre-pass ran (a job without one detects with NER and patterns only).
    skipped:
        Tables whose source could not be read twice (standard input), so their values
        are not in the lexicon.
    """

    kinds: dict[str, str] = field(default_factory=dict)
    prepared: bool = False
    skipped: list[str] = field(default_factory=list)
    _prf: DeterministicPrf = field(
        default_factory=lambda: DeterministicPrf(
            KeyHandle(os.urandom(32), "lexicon", "text/lexicon")
        ),
        repr=False,
    )
    _names: dict[str, _Table] = field(default_factory=dict, repr=False)
    _initials: dict[str, _Table] = field(default_factory=dict, repr=False)
    _pairs: dict[str, _Table] = field(default_factory=dict, repr=False)
    _values: dict[str, _Table] = field(default_factory=dict, repr=False)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("the text lexicon stays in the process that built it")

    # -- hashing ---------------------------------------------------------------------------
    def _hash(self, tag: str, keys: pa.Array | list[str]) -> np.ndarray:
        """64-bit keyed PRF of ``tag`` + NUL + key, for every key at once."""
        arr = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        if len(arr) == 0:
            return np.zeros(0, np.uint64)
        tagged = pc.binary_join_element_wise(pa.scalar(tag), arr, "\x00")
        seeds = self._prf.seeds(tagged)
        return np.ascontiguousarray(seeds[:, :8]).view("<u8").reshape(-1)

    def __len__(self) -> int:
        tables = (self._names, self._initials, self._values)
        return sum(len(t) for d in tables for t in d.values())

    # -- building --------------------------------------------------------------------------
    def add(
        self, domain: str, kind: str, values: pa.Array, mapper: NameMapper | None = None
    ) -> None:
        """Remember the distinct non-null values of one column chunk.

        Parameters
        ----------
        mapper:
            For ``name`` domains, the column's name mapper: it gives the pseudonym
            initial stored for each (family name, given initial) pair.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown lexicon kind {kind!r}")
        self.kinds[domain] = kind
        uniq = pc.unique(_strings(values).drop_null())
        if kind == "name":
            self._add_names(domain, uniq, mapper)
            return
        keys = pc.unique(_value_keys(kind, uniq).drop_null())
        self._values.setdefault(domain, _Table()).add(self._hash(kind, keys))

    def _add_names(self, domain: str, names: pa.Array, mapper: NameMapper | None) -> None:
        """Name parts with their roles, and (family, given initial) pairs.

        Plain names ("Given [Middle] Family", words and single spaces) are split by Arrow
        with :func:`split_name`'s positional roles; names with commas, titles, initials
        or punctuation go through :func:`split_name` itself.
        """
        plain = pc.match_substring_regex(names, _PLAIN_NAME).to_numpy(zero_copy_only=False)
        plain = np.asarray(plain, dtype=bool).copy()
        if plain.any():  # a title among plain words ("Dr Jan Kowal"): split_name decides
            idx = np.flatnonzero(plain)
            lists = pc.split_pattern(names.take(pa.array(idx)), " ")
            lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
            titled = pc.is_in(
                pc.utf8_lower(pc.list_flatten(lists)), pa.array(sorted(TITLES))
            ).to_numpy(zero_copy_only=False)
            owner = np.repeat(np.arange(len(idx)), lengths)
            plain[idx[np.unique(owner[np.asarray(titled, dtype=bool)])]] = False
        part_words: list[pa.Array] = []
        role_bits: list[np.ndarray] = []
        pairs_g: list[pa.Array] = []
        pairs_f: list[pa.Array] = []
        sub = names.filter(pa.array(plain))
        if len(sub):
            lists = pc.split_pattern(sub, " ")
            words = pc.list_flatten(lists)
            lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
            pos = np.arange(len(words)) - np.repeat(starts, lengths)
            last = (pos == np.repeat(lengths - 1, lengths)) & (np.repeat(lengths, lengths) > 1)
            part_words.append(words)
            role_bits.append(np.where(last, ROLE_FAMILY, ROLE_GIVEN))
            multi = lengths > 1
            pairs_g.append(words.take(pa.array(starts[multi])))
            pairs_f.append(words.take(pa.array((starts + lengths - 1)[multi])))
        self._add_names_slow(names, plain, part_words, role_bits, pairs_g, pairs_f)
        roles = self._names.setdefault(domain, _Table(merge="or"))
        initials = self._initials.setdefault(domain, _Table(merge="same"))
        self._store_pairs(domain, pairs_g, pairs_f)
        self._store_names(part_words, role_bits, pairs_g, pairs_f, mapper, roles, initials)

    def _pair_keys(self, a: pa.Array, b: pa.Array) -> np.ndarray:
        """Hashes of unordered pairs of normalized name parts (any order matches)."""
        lo = pc.if_else(pc.less_equal(a, b), a, b)
        hi = pc.if_else(pc.less_equal(a, b), b, a)
        return self._hash("p", pc.binary_join_element_wise(lo, hi, "\x00"))

    def _store_pairs(self, domain: str, pairs_g: list[pa.Array], pairs_f: list[pa.Array]) -> None:
        """(given, family) of every full name, so that "Hope Bell" is known as a person
        whatever the case and order, while "hope" and "bell" alone stay words."""
        g = pa.concat_arrays([a.cast(pa.string()) for a in pairs_g])
        f = pa.concat_arrays([a.cast(pa.string()) for a in pairs_f])
        if len(g) == 0:
            return
        genc, fenc = dictionary_encode(g), dictionary_encode(f)
        gn = pa.array([normalize_name(x) for x in genc.dictionary.to_pylist()], pa.string())
        fn = pa.array([normalize_name(x) for x in fenc.dictionary.to_pylist()], pa.string())
        keys = self._pair_keys(gn.take(genc.indices), fn.take(fenc.indices))
        self._pairs.setdefault(domain, _Table()).add(keys)

    def known_pairs(self, domain: str, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """The pairs of written words that are the given and family name of one known
        person (in either order)."""
        distinct = sorted(set(pairs))
        table = self._pairs.get(domain)
        if table is None or not distinct:
            return set()
        a = pa.array([normalize_name(x) for x, _ in distinct], pa.string())
        b = pa.array([normalize_name(y) for _, y in distinct], pa.string())
        found, _ = table.lookup(self._pair_keys(a, b))
        return {p for p, ok in zip(distinct, found.tolist(), strict=True) if ok}

    @staticmethod
    def _add_names_slow(
        names: pa.Array,
        plain: np.ndarray,
        part_words: list[pa.Array],
        role_bits: list[np.ndarray],
        pairs_g: list[pa.Array],
        pairs_f: list[pa.Array],
    ) -> None:
        """Names with commas, titles, initials or hyphens: :func:`split_name`, per value."""
        rest = names.filter(pa.array(~plain)).to_pylist()
        words: list[str] = []
        bits: list[int] = []
        given: list[str] = []
        family: list[str] = []
        for v in rest:
            parts = [(v[a:b], r) for a, b, r in split_name(v)]
            for w, r in parts:
                if r in _ROLE_BITS:
                    words.append(w)
                    bits.append(_ROLE_BITS[r])
            g = [w for w, r in parts if r == GIVEN]
            f = [w for w, r in parts if r == FAMILY]
            if g and f:
                given.append(g[0])
                family.append(f[-1])
        part_words.append(pa.array(words, pa.string()))
        role_bits.append(np.asarray(bits, dtype=np.int64))
        pairs_g.append(pa.array(given, pa.string()))
        pairs_f.append(pa.array(family, pa.string()))

    def _store_names(
        self,
        part_words: list[pa.Array],
        role_bits: list[np.ndarray],
        pairs_g: list[pa.Array],
        pairs_f: list[pa.Array],
        mapper: NameMapper | None,
        roles: _Table,
        initials: _Table,
    ) -> None:
        words = pa.concat_arrays([a.cast(pa.string()) for a in part_words])
        bits = np.concatenate(role_bits) if role_bits else np.zeros(0, np.int64)
        # normalize once per distinct written part (Python, but over a name vocabulary)
        enc = dictionary_encode(words)
        norm = pa.array([normalize_name(w) for w in enc.dictionary.to_pylist()], pa.string())
        roles.add(self._hash("n", expand(norm, enc.indices)), bits)
        if mapper is None:
            return
        g = pa.concat_arrays([a.cast(pa.string()) for a in pairs_g])
        f = pa.concat_arrays([a.cast(pa.string()) for a in pairs_f])
        if len(g) == 0:
            return
        genc, fenc = dictionary_encode(g), dictionary_encode(f)
        gnorm = [normalize_name(x) for x in genc.dictionary.to_pylist()]
        fnorm = pa.array([normalize_name(x) for x in fenc.dictionary.to_pylist()], pa.string())
        # the pseudonym's initial for each distinct given name, in one PRF call
        mapped = mapper.map_parts([(GIVEN, x.title() or "x") for x in gnorm])
        ginit = pa.array([x[:1] for x in gnorm], pa.string())
        pinit = np.array([ord(m[:1].upper()) if m else 0 for m in mapped], dtype=np.uint32)
        keys = pc.binary_join_element_wise(
            fnorm.take(fenc.indices), ginit.take(genc.indices), "\x00"
        )
        initials.add(self._hash("i", keys), pinit[genc.indices.to_numpy(zero_copy_only=False)])

    # -- lookups ---------------------------------------------------------------------------
    def name_roles(self, domain: str, words: Iterable[str]) -> dict[str, int]:
        """Role bits (:data:`ROLE_GIVEN` | :data:`ROLE_FAMILY`) of each word, 0 if unknown.

        One PRF call for all words: the operator asks once per batch.
        """
        distinct = sorted(set(words))
        table = self._names.get(domain)
        if table is None or not distinct:
            return dict.fromkeys(distinct, 0)
        norm = pa.array([normalize_name(w) for w in distinct], pa.string())
        _, bits = table.lookup(self._hash("n", norm))
        return dict(zip(distinct, bits.tolist(), strict=True))

    def name_role(self, domain: str, word: str) -> int:
        """Role bits of one word (see :meth:`name_roles`)."""
        return self.name_roles(domain, [word])[word]

    def initials(
        self, domain: str, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str | None]:
        """For each (family, initial): the pseudonym's initial when exactly one known person
        has that family name and given initial ("I. Petrosyan"), else None."""
        distinct = sorted(set(pairs))
        table = self._initials.get(domain)
        if table is None or not distinct:
            return dict.fromkeys(distinct)
        keys = pa.array(
            [f"{normalize_name(f)}\x00{normalize_name(i)[:1]}" for f, i in distinct], pa.string()
        )
        found, vals = table.lookup(self._hash("i", keys))
        return {
            p: (chr(int(v)) if ok and v else None)
            for p, ok, v in zip(distinct, found.tolist(), vals.tolist(), strict=True)
        }

    def initial_for(self, domain: str, family: str, initial: str) -> str | None:
        """One (family, initial) lookup (see :meth:`initials`)."""
        return self.initials(domain, [(family, initial)])[(family, initial)]

    def find(
        self, texts: Iterable[str], wordlike: Callable[[str], bool] | None = None
    ) -> list[list[LexHit]]:
        """Known values in each text: names, e-mails, phones and identifiers.

        Name words are looked up one by one and joined into spans when adjacent (a space,
        or a comma for "FAMILY, Given"), with a leading initial when the family name
        follows it. A single known word counts when it is capitalized or in capitals; a
        lower-case one only next to another known word ("isabel petrosyan"), because a
        lone lower-case word is more likely an ordinary word that is also someone's name.

        ``wordlike`` says which names are above all words (Bell, Rose, Will): a span of
        such words counts only in a name context (:func:`_name_context`): a known full
        name (given and family of one person, any case and order), a capital the sentence
        does not force, a title or initial before it, the "FAMILY, Given" form, the line
        after a signature delimiter, or another known name part that is not a word.
        Otherwise a capitalized one is returned ``weak`` (a detector must agree) and a
        lower-case one not at all.
        Every distinct candidate of the batch is normalized and hashed once, in one PRF
        call per kind.
        """
        texts = list(texts)
        name_domains = [d for d, k in self.kinds.items() if k == "name" and d in self._names]
        by_kind: dict[str, list[str]] = {}
        for d, k in self.kinds.items():
            if k != "name" and d in self._values:
                by_kind.setdefault(k, []).append(d)
        # 1. candidates of every text, distinct across the batch
        words: list[list[tuple[int, int, str]]] = []
        cands: dict[str, list[list[tuple[int, int, str]]]] = {k: [] for k in by_kind}
        for text in texts:
            if name_domains:
                words.append(_name_words(text))
            for kind in by_kind:
                pattern = {"email": _EMAIL, "phone": _PHONE, "token": _TOKEN}[kind]
                row = []
                for m in pattern.finditer(text):
                    end = m.end()
                    if kind == "phone" and unbalanced_close(m.group()):
                        end -= 1
                    row.append((m.start(), end, text[m.start() : end]))
                cands[kind].append(row)
        out: list[list[LexHit]] = [[] for _ in texts]
        # 2. names: one hash per distinct word, one lookup per domain
        if name_domains:
            distinct = sorted({w for row in words for *_, w in row if len(w) > 1})
            index = {w: i for i, w in enumerate(distinct)}
            norm = pa.array([normalize_name(w) for w in distinct], pa.string())
            hashes = self._hash("n", norm)
            amb = [bool(wordlike(w)) for w in distinct] if wordlike is not None else None
            for d in name_domains:
                _, bits = self._names[d].lookup(hashes)
                known = bits.tolist()
                rows: list[list[LexHit]] = []
                asked: set[tuple[str, str]] = set()
                for text, row in zip(texts, words, strict=True):
                    roles = [known[index[w]] if w in index else 0 for *_, w in row]
                    hits = _name_spans(text, row, roles, d)
                    rows.append(hits)
                    if amb is not None:
                        asked.update(_adjacent_pairs(text, row, hits, index, amb))
                pairs = self.known_pairs(d, asked) if asked else set()
                for i, (text, row, hits) in enumerate(zip(texts, words, rows, strict=True)):
                    if amb is None:
                        out[i].extend(hits)
                        continue
                    judged = (_judge(text, row, h, index, amb, pairs) for h in hits)
                    out[i].extend(h for h in judged if h is not None)
        # 3. e-mails, phones, identifiers: one hash per distinct candidate
        for kind, domains in by_kind.items():
            distinct = sorted({s for row in cands[kind] for *_, s in row})
            if not distinct:
                continue
            keys = _value_keys(kind, pa.array(distinct, pa.string()))
            valid = keys.is_valid().to_numpy(zero_copy_only=False)
            hashes = self._hash(kind, keys.fill_null(""))
            owner: dict[str, str] = {}
            for d in domains:
                found, _ = self._values[d].lookup(hashes)
                for j in np.flatnonzero(found & valid):
                    owner.setdefault(distinct[j], d)
            for i, row in enumerate(cands[kind]):
                out[i].extend(LexHit(a, b, owner[s]) for a, b, s in row if s in owner)
        return [sorted(hits) for hits in out]


def _name_words(text: str) -> list[tuple[int, int, str]]:
    """Words of a text outside tokens with an '@' or a digit, in one linear pass."""
    coded = iter(m.span() for m in _CODED.finditer(text))
    span = next(coded, None)
    out: list[tuple[int, int, str]] = []
    for m in _WORD.finditer(text):
        a = m.start()
        while span is not None and span[1] <= a:
            span = next(coded, None)
        if span is not None and span[0] <= a:
            continue
        out.append((a, m.end(), m.group()))
    return out


def _span_words(row: list[tuple[int, int, str]], hit: LexHit) -> list[tuple[int, int, str]]:
    i = bisect.bisect_left(row, (hit.start, -1, ""))
    out: list[tuple[int, int, str]] = []
    while i < len(row) and row[i][1] <= hit.end:
        out.append(row[i])
        i += 1
    return out


def _adjacent_pairs(
    text: str,
    row: list[tuple[int, int, str]],
    hits: list[LexHit],
    index: dict[str, int],
    amb: list[bool],
) -> list[tuple[str, str]]:
    """Pairs of neighbouring words in spans that hold a word-like name (to ask whether
    they are one known person)."""
    out: list[tuple[str, str]] = []
    for h in hits:
        ws = [w for *_, w in _span_words(row, h) if len(w) > 1]
        if any(w in index and amb[index[w]] for w in ws):
            out.extend(itertools.pairwise(ws))
    return out


_COMMA_AFTER = regex.compile(r",[ \t]{1,2}\p{Lu}")
_TITLED = regex.compile(
    r"(?i)\b(?:"
    + "|".join(sorted((regex.escape(t) for t in TITLES), key=len, reverse=True))
    + r")\.?[ \t]+$"
)
_CALENDAR = frozenset(
    {
        *("january", "february", "march", "april", "may", "june", "july", "august"),
        *("september", "october", "november", "december", "monday", "tuesday"),
        *("wednesday", "thursday", "friday", "saturday", "sunday"),
    }
)


def name_context(text: str, a: int, b: int, word: str) -> bool:
    """Whether the text itself shows that ``word`` at ``a:b`` is a name (see
    :meth:`Lexicon.find`); a month or weekday name needs more than its capital."""
    if _TITLED.search(text, max(0, a - 12), a):
        return True
    if word.isupper() and len(word) > 1 and _COMMA_AFTER.match(text, b):
        return True  # "BELL, Hope"
    if text.startswith("--") and text.count("\n", 0, a) == 1:
        return True  # the name line of a signature block (its own segment)
    if word[:1].isupper() and not word.isupper() and fold_word(word) not in _CALENDAR:
        return not sentence_start(text, a)
    return False


def _judge(
    text: str,
    row: list[tuple[int, int, str]],
    hit: LexHit,
    index: dict[str, int],
    amb: list[bool],
    pairs: set[tuple[str, str]],
) -> LexHit | None:
    """Keep, weaken or drop a name span that holds word-like names (see ``find``)."""
    ws = [w for w in _span_words(row, hit) if len(w[2]) > 1]
    flags = [w[2] in index and amb[index[w[2]]] for w in ws]
    if not any(flags):
        return hit
    if any((x[2], y[2]) in pairs for x, y in itertools.pairwise(ws)):
        return hit  # a known person's full name, in any case and order
    if hit.start < ws[0][0]:
        return hit  # "H. Bell": an initial before it
    for (a, b, w), amb_word in zip(ws, flags, strict=True):
        if not amb_word and w[:1].isupper():
            return hit  # next to a known name part that is not a word
        if name_context(text, a, b, w):
            return hit
    if any(w[:1].isupper() for *_, w in ws):
        return hit._replace(weak=True)
    return None


def _name_spans(
    text: str, words: list[tuple[int, int, str]], known: list[int], domain: str
) -> list[LexHit]:
    hits: list[LexHit] = []
    i = 0
    while i < len(words):
        if not known[i]:
            i += 1
            continue
        j = i
        while (
            j + 1 < len(words)
            and known[j + 1]
            and _GAP.fullmatch(text, words[j][1], words[j + 1][0]) is not None
        ):
            j += 1
        start, end = words[i][0], words[j][1]
        single_lower = j == i and not words[i][2][:1].isupper()
        # "I. Petrosyan": take the initial in when a family name follows it
        if i > 0 and len(words[i - 1][2]) == 1 and words[i - 1][2].isupper():
            a, b, _ = words[i - 1]
            if text[b : b + 1] == "." and _GAP.fullmatch(text, b + 1, start) is not None:
                start = a
                single_lower = False
        if not single_lower:
            hits.append(LexHit(start, end, domain))
        i = j + 1
    return hits
