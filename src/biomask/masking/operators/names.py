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
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.keys.primitives import DeterministicPrf
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    dictionary_encode,
    register,
)
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
_combining = unicodedata.combining
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
    if part.isascii():  # the same result: ASCII has no case folds, decompositions or marks
        return part.lower().strip(".")
    decomposed = unicodedata.normalize("NFKD", part.casefold().translate(_FOLD))
    return "".join([c for c in decomposed if not _combining(c)]).strip(".")


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
    """Maps (role, name part) pairs to pseudonym parts, batched through one PRF call.

    The mapper remembers, bounded in size, the name parts it has chosen pseudonyms for and
    the pieces of full names it has seen, so later batches pay for new names only.
    """

    def __init__(self, prf: DeterministicPrf) -> None:
        self.prf = prf
        self.given, self.family = _lists()
        self._chosen: dict[str, dict[str, str]] = {}  # role -> normalized part -> name
        self._vocab = _NO_VOCAB

    def _choose(self, role: str, norms: Collection[str]) -> dict[str, str]:
        """A mapping with the pseudonym of each normalized part in ``role``.

        One PRF call for the parts not chosen before; GIVEN and INITIAL share GIVEN's.
        """
        cache = self._chosen.get(role)
        if cache is None or len(cache) + len(norms) > _MAX_CHOSEN:
            cache = self._chosen[role] = {}  # replaced, never cleared: a reader keeps its own
        todo = [n for n in set(norms) if n not in cache]
        if todo:
            idx = self.prf.integers([f"{role}:{n}".encode() for n in todo], 1 << 30)
            pool = self.family if role == FAMILY else self.given
            size = len(pool)
            cache.update(zip(todo, [pool[k % size] for k in idx.tolist()], strict=True))
        return cache

    def map_parts(self, parts: list[tuple[str, str]]) -> list[str]:
        """Pseudonyms for (role, text) pairs, in the case shape of each text.

        An INITIAL maps to the first letter of the given-name pseudonym of that letter; the
        text operator, which knows the full name, uses the given name's initial instead.
        """
        if not parts:
            return []
        keys = [(GIVEN if r == INITIAL else r, normalize_name(t)) for r, t in parts]
        by_role: dict[str, list[str]] = {}
        for r, n in keys:
            by_role.setdefault(r, []).append(n)
        chosen = {r: self._choose(r, norms) for r, norms in by_role.items()}
        out = []
        for (r, t), (key, n) in zip(parts, keys, strict=True):
            name = chosen[key][n]
            out.append(_shape_case(t, name[0] if r == INITIAL else name))
        return out

    def full_names(self, values: list[str]) -> list[str]:
        """Pseudonymize whole name strings, keeping titles, order, commas and case."""
        out: list[str] = self.full_names_array(pa.array(values, pa.string())).to_pylist()
        return out

    def full_names_array(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Pseudonymize a string array of full names, vectorized; nulls stay null.

        Each value is cut at its spaces into *pieces*, zero-copy: a piece keeps the space
        that follows it, so the pieces of a value, concatenated, are the value. Pieces are
        looked up in the mapper's vocabulary of pieces seen before (each stored with its
        replacement as a given and as a family name), so only new distinct pieces are
        replaced (the name vocabulary: a few thousand words even for millions of people;
        ASCII words with Arrow, the rest in Python). A word piece's role (given or family
        name) follows from its position, the value's comma and its title, with numpy; the
        output is the replacement pieces, one take. Outputs are those of the per-value
        rules (``tests/masking/operators/test_names.py`` has them as an oracle).
        """
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        typ = values.type
        if not pa.types.is_string(typ):
            values = values.cast(pa.string())
        n = len(values)
        if n == 0:
            return pa.array([], typ)
        validity, values = _null_free(values)
        offs = np.frombuffer(values.buffers()[1], np.int32)[values.offset : values.offset + n + 1]
        data_buf = values.buffers()[2] or pa.py_buffer(b"")
        starts, first, is_first = _piece_bounds(offs, np.frombuffer(data_buf, np.uint8))
        pieces = pa.Array.from_buffers(
            pa.string(), len(starts) - 1, [None, pa.py_buffer(starts), data_buf]
        )
        gid, vocab = self._lookup(pieces)
        # plain values (only comma-free word pieces): the last of two or more pieces is the
        # family name, the others are given names
        sel = gid * 2
        sel += is_first[1:] & ~is_first[:-1]
        odd = np.flatnonzero(gid < vocab.odd)  # pieces that are not plain words
        redact = np.zeros(0, np.int64)
        if len(odd):
            owner = np.searchsorted(first, odd, side="right") - 1  # sorted, as odd is
            owners = owner[np.concatenate([[True], owner[1:] != owner[:-1]])]
            redact = _odd_roles(owners, first, gid, vocab.code, sel)
        out_pieces = vocab.out.take(pa.array(sel))
        out_offs = np.frombuffer(out_pieces.buffers()[1], np.int32)[out_pieces.offset :][first]
        out = pa.Array.from_buffers(
            pa.string(),
            n,
            [validity, pa.py_buffer(out_offs), out_pieces.buffers()[2] or pa.py_buffer(b"")],
            null_count=-1 if validity is not None else 0,
        )
        if len(redact):  # a value with no name words at all must not pass through
            kept = pc.utf8_length(pc.utf8_trim_whitespace(values.take(redact))).fill_null(0)
            blank = kept.to_numpy() == 0  # (a null is blank)
            mask = np.zeros(n, bool)
            mask[redact[~blank]] = True
            if mask.any():
                out = pc.if_else(pa.array(mask), pa.scalar("[REDACTED]"), out)
        return out if out.type == typ else out.cast(typ)

    def _lookup(self, pieces: pa.Array) -> tuple[np.ndarray, _Vocab]:
        """Vocabulary index (int32) of each piece, adding new pieces to the vocabulary."""
        vocab = self._vocab
        size = len(vocab.pieces)
        if size:
            found = pc.index_in(pieces, value_set=vocab.pieces)
            if not found.null_count:
                return found.to_numpy().astype(np.int32, copy=False), vocab
            miss = pc.is_null(found)
            enc = dictionary_encode(pieces.filter(miss))
            if size + len(enc.dictionary) <= _MAX_VOCAB:
                gid = found.fill_null(0).to_numpy().astype(np.int32)
                gid[miss.to_numpy(zero_copy_only=False)] = enc.indices.to_numpy() + size
                grown, moved = self._grow(vocab, enc.dictionary)
                self._vocab = grown  # (another thread may replace it: use ours)
                return moved[gid], grown
        enc = dictionary_encode(pieces)  # first batch, or a vocabulary grown too large
        grown, moved = self._grow(_NO_VOCAB, enc.dictionary)
        self._vocab = grown
        return moved[enc.indices.to_numpy()], grown

    def _grow(self, vocab: _Vocab, new: pa.Array) -> tuple[_Vocab, np.ndarray]:
        """The vocabulary with ``new`` pieces (distinct, not in it yet) added.

        Returns the new vocabulary and where each index of the old one followed by ``new``
        is in it (odd pieces are kept before plain words).

        A piece's words are replaced as :meth:`map_parts` replaces them, all in the piece's
        role: a word piece gets a replacement as a given and as a family name. Pieces that
        are one ASCII word (most) are replaced with Arrow, the others in Python.
        """
        size = len(new)
        content = pc.replace_substring(new, " ", "")  # a piece's one space is its last byte
        plain = _no_nulls(pc.match_substring_regex(content, _PLAIN))
        if not _pools()[2]:  # pool names that Arrow's ASCII case functions may not shape
            plain[:] = False
        at = np.concatenate([np.flatnonzero(plain), np.flatnonzero(~plain)])
        n_plain = int(plain.sum())
        g_plain, f_plain, code_plain = self._grow_plain(content.take(at[:n_plain]))
        g_other, f_other, code_other = self._grow_other(content.take(at[n_plain:]).to_pylist())
        code = np.concatenate([code_plain, np.array(code_other, np.int8)])
        # rows of those results in vocabulary order: odd pieces (not plain words) first
        odd = code != _WORD_PIECE
        rows = np.concatenate([np.flatnonzero(odd), np.flatnonzero(~odd)])
        n_odd = int(odd.sum())
        pieces = new.cast(pa.string()).take(at[rows])
        tail = pc.if_else(pc.ends_with(pieces, " "), " ", "")
        given = pa.concat_arrays([g_plain, pa.array(g_other, pa.string())]).take(rows)
        family = pa.concat_arrays([f_plain, pa.array(f_other, pa.string())]).take(rows)
        out = pa.concat_arrays(
            [
                pc.binary_join_element_wise(given, tail, ""),
                pc.binary_join_element_wise(family, tail, ""),
            ]
        ).take(np.stack([np.arange(size), size + np.arange(size)], axis=1).reshape(-1))
        old_size, old_odd = len(vocab.pieces), vocab.odd
        moved = np.empty(old_size + size, np.int32)  # index before -> index in the new one
        moved[:old_odd] = np.arange(old_odd)
        moved[old_odd:old_size] = np.arange(old_odd, old_size) + n_odd
        r = np.arange(size)
        moved[old_size + at[rows]] = np.where(r < n_odd, old_odd + r, old_size + r)
        grown = _Vocab(
            pa.concat_arrays(
                [vocab.pieces[:old_odd], pieces[:n_odd], vocab.pieces[old_odd:], pieces[n_odd:]]
            ),
            pa.concat_arrays(
                [
                    vocab.out[: 2 * old_odd],
                    out[: 2 * n_odd],
                    vocab.out[2 * old_odd :],
                    out[2 * n_odd :],
                ]
            ),
            np.concatenate(
                [vocab.code[:old_odd], code[rows[:n_odd]], vocab.code[old_odd:], code[rows[n_odd:]]]
            ),
            old_odd + n_odd,
        )
        return grown, moved

    def _grow_plain(self, pieces: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """Replacements (as given name, as family name) and codes of :data:`_PLAIN` pieces.

        As :meth:`map_parts` does it: an ASCII word needs no accent removal and no case
        folding beyond lower case, and the pool names are ASCII, so Arrow's ASCII case
        functions shape them as Python's do. The word's dot and comma stay after it.
        """
        words = pc.utf8_rtrim(pieces, ".,")
        after = pc.utf8_ltrim(pieces, _ASCII_LETTERS)
        norm = pc.ascii_lower(words)
        title = _no_nulls(pc.is_in(norm, value_set=_TITLE_ARRAY))
        one = pc.utf8_length(words).to_numpy() == 1
        given_of, family_of, _ = _pools()
        keep = pa.array(title)  # a title's words stay as they are
        g_idx = self.prf.integers(pc.binary_join_element_wise(f"{GIVEN}:", norm, ""), 1 << 30)
        f_idx = self.prf.integers(pc.binary_join_element_wise(f"{FAMILY}:", norm, ""), 1 << 30)
        g_name = given_of.take(g_idx % len(given_of))
        f_name = family_of.take(f_idx % len(family_of))
        initial = pc.utf8_slice_codeunits(g_name, 0, 1)
        g = _shape_case_ascii(words, pc.if_else(one, initial, g_name))
        f = _shape_case_ascii(words, pc.if_else(one, initial, f_name))
        g = pc.if_else(keep, pieces, pc.binary_join_element_wise(g, after, ""))
        f = pc.if_else(keep, pieces, pc.binary_join_element_wise(f, after, ""))
        code = np.where(title, _TITLE_PIECE, np.where(one, _INITIAL_PIECE, _WORD_PIECE))
        comma = _no_nulls(pc.ends_with(pieces, ",")) & ~title
        return g, f, (code + np.where(comma, _COMMA, 0)).astype(np.int8)

    def _grow_other(self, texts: list[str]) -> tuple[list[str], list[str], list[int]]:
        """Replacements (as given name, as family name) and codes of other pieces."""
        # per piece: kind, its words (text, normalized) and their matches (None: the piece
        # is one word and nothing else)
        info: list[tuple[int, list[tuple[str, str]], list[re.Match[str]] | None]] = []
        given: list[str] = []
        family: list[str] = []
        for c in texts:
            if c.isalpha():  # one word and nothing else: no regex needed
                n = normalize_name(c)
                kind = (
                    _TITLE_PIECE if n in TITLES else _INITIAL_PIECE if len(c) == 1 else _WORD_PIECE
                )
                info.append((kind, [(c, n)], None))
                if kind >= _INITIAL_PIECE:
                    given.append(n)
                if kind == _WORD_PIECE:
                    family.append(n)
                continue
            found = list(_WORD.finditer(c))
            kind = _kind_of([m.group() for m in found])
            words = []
            if kind >= _INITIAL_PIECE:
                words = [(w, normalize_name(w)) for w in (m.group().rstrip(".") for m in found)]
                given += [n for _, n in words]
                if kind == _WORD_PIECE:
                    family += [n for _, n in words]
            info.append((kind, words, found))
        as_given, as_family = self._choose(GIVEN, given), self._choose(FAMILY, family)
        g_out: list[str] = []
        f_out: list[str] = []
        codes: list[int] = []
        for c, (kind, words, ms) in zip(texts, info, strict=True):
            codes.append(kind | _COMMA if kind >= _INITIAL_PIECE and "," in c else kind)
            if kind == _WORD_PIECE:
                g_out.append(_substitute(c, ms, [_shape_case(w, as_given[n]) for w, n in words]))
                f_out.append(_substitute(c, ms, [_shape_case(w, as_family[n]) for w, n in words]))
            elif kind == _INITIAL_PIECE:
                w, n = words[0]
                g_out.append(_substitute(c, ms, [_shape_case(w, as_given[n][0])]))
                f_out.append(g_out[-1])
            else:
                g_out.append(c)
                f_out.append(c)
        return g_out, f_out, codes


_KEEP_PIECE, _TITLE_PIECE, _INITIAL_PIECE, _WORD_PIECE = 0, 1, 2, 3
_COMMA = 4  # added to the kind of a name piece (initial or word) with a comma
_MAX_VOCAB = 1 << 18  # pieces remembered per mapper (a few MB)
_MAX_CHOSEN = 1 << 18  # name parts remembered per mapper


@dataclass(frozen=True)
class _Vocab:
    """Pieces of full names seen by a mapper, with what they are replaced by.

    Replaced as a whole, never mutated: a mapper used from several threads at once only
    ever reads a consistent vocabulary (at worst, one thread's additions are lost).
    """

    pieces: pa.Array  # distinct pieces (a piece keeps its trailing space)
    out: pa.Array  # two per piece: [2i] as a given name (or as it is), [2i + 1] as family
    code: np.ndarray  # int8 per piece: _KEEP/_TITLE/_INITIAL/_WORD_PIECE, plus _COMMA
    odd: int  # the pieces that are not plain words (code != _WORD_PIECE) come first


_NO_VOCAB = _Vocab(pa.array([], pa.string()), pa.array([], pa.string()), np.zeros(0, np.int8), 0)


def _null_free(values: pa.Array) -> tuple[pa.Buffer | None, pa.Array]:
    """The validity bitmap for the output, and ``values`` with nothing under its nulls."""
    if not values.null_count:
        return None, values
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    lens = pc.binary_length(values).fill_null(0).to_numpy()
    if lens[~valid].any():  # data under a null (Arrow allows it): not to be processed
        values = values.fill_null("")
    return pa.py_buffer(np.packbits(valid, bitorder="little")), values


def _piece_bounds(offs: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of string values split at each space, the space kept at the piece's end.

    Returns
    -------
    (starts, first, is_first)
        int32 offsets of the pieces in the data buffer (one more than pieces); for each
        value (and one past the end) the index of its first piece; and, per offset, whether
        a value starts there. A value of k spaces has k + 1 pieces, as
        ``pc.split_pattern(values, " ")`` gives.
    """
    base = int(offs[0])
    o = offs - base
    size = int(o[-1])
    space = data[base : base + size] == 32
    bound = np.zeros(size + 1, bool)  # a piece starts after a space and where a value does
    bound[1:] = space
    bound[o] = True
    starts = np.flatnonzero(bound)
    if len(starts) == len(o) + np.count_nonzero(space):
        # no two boundaries share a byte: a value starts where no space is just before
        is_first = np.empty(len(starts), bool)
        is_first[0] = True
        np.logical_not(space[starts[1:] - 1], out=is_first[1:])
        first = np.flatnonzero(is_first)
    else:  # empty values or values ending in a space: boundaries that share a byte
        after = np.flatnonzero(space) + 1
        first = np.arange(len(o)) + np.searchsorted(after, o, side="right")
        starts = np.empty(len(o) + len(after), np.int64)
        is_first = np.zeros(len(starts), bool)
        is_first[first] = True
        starts[first] = o
        starts[~is_first] = after
    return (starts + base).astype(np.int32), first, is_first


def _odd_roles(
    owners: np.ndarray, first: np.ndarray, gid: np.ndarray, code: np.ndarray, sel: np.ndarray
) -> np.ndarray:
    """Set ``sel`` for the pieces of values that are not plain words; return empty ones.

    ``owners`` are those values, ``first`` each value's first piece, ``gid`` each piece's
    vocabulary index and ``code`` each vocabulary entry's code. A word piece is a family
    name when it is before or at the first comma, or else the last of two or more name
    pieces, or the only one after a title; otherwise a given name.
    """
    lo, end = first[owners], first[owners + 1]
    cnt = end - lo
    seg = np.cumsum(cnt) - cnt  # each value's first row below
    j = np.arange(int(cnt.sum())) + np.repeat(lo - seg, cnt)  # the values' pieces
    g = gid[j]
    c = code[g]
    kind = c & 3
    is_part = kind >= _INITIAL_PIECE
    nparts = np.add.reduceat(is_part, seg, dtype=np.int64)
    titled = np.logical_or.reduceat(kind == _TITLE_PIECE, seg)
    big = np.iinfo(np.int64).max
    comma_at = np.minimum.reduceat(np.where(c >= _COMMA, j, big), seg)  # first name piece
    last_at = np.maximum.reduceat(np.where(is_part, j, -1), seg)  # with a comma; last one
    has_comma = comma_at != big
    # the family name pieces: word pieces from fam_lo to fam_hi
    fam_lo = np.where(has_comma, lo, last_at)
    fam_hi = np.where(has_comma, comma_at, np.where((nparts > 1) | titled, last_at, -1))
    fam = (j >= np.repeat(fam_lo, cnt)) & (j <= np.repeat(fam_hi, cnt)) & (kind == _WORD_PIECE)
    sel[j] = g * 2 + fam
    out: np.ndarray = owners[nparts == 0]
    return out


@lru_cache(maxsize=1)
def _pools() -> tuple[pa.Array, pa.Array, bool]:
    """The name pools as Arrow arrays, and whether all their names are ASCII."""
    given, family = _lists()
    return (
        pa.array(given, pa.string()),
        pa.array(family, pa.string()),
        all(n.isascii() for n in given + family),
    )


_TITLE_ARRAY = pa.array(sorted(TITLES), pa.string())
#: pieces replaced with Arrow: one ASCII word, perhaps with a dot and a comma after it
_PLAIN = r"^[A-Za-z]+\.?,?$"
_ASCII_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _no_nulls(flags: pa.Array) -> np.ndarray:
    out: np.ndarray = flags.to_numpy(zero_copy_only=False).astype(bool)
    return out


def _shape_case_ascii(src: pa.Array, name: pa.Array) -> pa.Array:
    """:func:`_shape_case` for ASCII source words and ASCII names, with Arrow."""
    upper = pc.and_(pc.ascii_is_upper(src), pc.greater(pc.utf8_length(src), 1))
    return pc.if_else(
        upper, pc.ascii_upper(name), pc.if_else(pc.ascii_is_lower(src), pc.ascii_lower(name), name)
    )


def _kind_of(words: list[str]) -> int:
    if not words:
        return _KEEP_PIECE
    if all(normalize_name(w) in TITLES for w in words):
        return _TITLE_PIECE
    if len(words) == 1 and len(words[0].rstrip(".")) == 1:
        return _INITIAL_PIECE
    return _WORD_PIECE


def _substitute(text: str, matches: list[re.Match[str]] | None, names: list[str]) -> str:
    """``text`` with each word match replaced by a name, keeping the word's final dot.

    ``matches`` None: the text is one word without a dot, replaced by ``names[0]``.
    """
    if matches is None:
        return names[0]
    out: list[str] = []
    at = 0
    for m, name in zip(matches, names, strict=True):
        out += (text[at : m.start()], _keep_dot(m.group(), name))
        at = m.end()
    out.append(text[at:])
    return "".join(out)


def _keep_dot(src: str, new: str) -> str:
    return new + "." if src.endswith(".") else new


@register
class Pseudonym(Operator[PseudonymOp]):
    """Consistent realistic names per domain."""

    name = "pseudonym"
    parallel_safe = True  # the NameMapper cache is replaced whole, never edited in place

    def __init__(self, spec: PseudonymOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.mapper = NameMapper(
            DeterministicPrf(binding.keyring.derive_token("pseudonym", spec.domain))
        )

    @property
    def key_id(self) -> str | None:
        return self.mapper.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        ok = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
        return None if ok else "pseudonym takes string columns"

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        return self.mapper.full_names_array(values)
