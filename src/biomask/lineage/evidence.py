"""Evidence collectors for the dossier: distributions, k-anonymity, residual-PII scan.

They watch the batches going into and out of the Masker and keep only what may be written:

* **Distributions** (Art. 10(2)(f) bias examination) of the policy's quasi-identifier
  columns. Category values are recorded only for QI columns the policy *keeps*
  (``op: keep``, e.g. gender, nationality), before and after masking, so the effect of
  quarantine on the demographics shows. A QI column that is masked (``generalize`` age
  bands) gets its *after* distribution only: its before values are the raw data.
  Any other masked QI column gets no distribution at all.
* **k-anonymity**: counts of each combination of the (recorded) QI columns after masking;
  k is the smallest group. Only counts leave the collector, never the combinations.
* **Residual-PII scan**: every distinct input value of a masked string column (and of an
  integer key: a column ``tokenize`` or ``hash`` masks, as its decimal string) is hashed
  to 64 bits under a random per-run key that lives only in memory; every output string
  value, each of its whitespace- and punctuation-separated tokens and its 2-3 token
  n-grams are hashed the same way, and so are integer token columns and kept integer
  columns that can be a raw key (named like an identifier or like a tokenized column: a
  foreign key left ``keep`` while its key is tokenized). After the run the two sets are
  compared. A match is a
  *hit* (residual PII: e.g. a real name left inside free text) unless it is explained as a
  *coincidence*: it lies in a column of tokens or pseudonyms the masker generated, or it
  is itself a token or pseudonym this run issued in the input column's domain (e.g. in free
  text). Format-preserving tokens share the value space of the real values: "SUBJ-581942"
  may be one subject's token and another's real id, a pseudonym may be somebody's real
  name, a pseudonym's first name may be a city. Values passed through unchanged in place, which
  the set comparison cannot tell from a coincidence, are counted row by row on batches
  whose input and output rows line up (no quarantine in that batch).
  Only counts and column names are reported, never a value or a digest; the key is
  discarded at the end, so the in-memory digests could not be reversed even if dumped.

Cost is a few column-wide passes per batch, no Python loop over rows and no per-batch
sort. With lineage's compiled helper (:mod:`biomask.lineage._evidence`'s ``ev_scan``,
loaded by :func:`biomask._native.load`, switched off by ``BIOMASK_NATIVE_KERNELS=0``), the
values whose normal form is their ASCII lower case (ASCII, no whitespace but single spaces
between words: nearly all) are classified, lower-cased, hashed and cut into candidates in
one pass over the column's bytes; when no candidates are wanted (whole values: every masked
input column), so are the values whose only non-ASCII characters are U+00C0-U+00FF
(accented Latin letters, lower-cased as Arrow's ``utf8_lower`` does, ``MIN_TOKEN`` counted
in characters as :func:`_long` does). The
others take the Arrow path below, in the same groups, so both paths keep the same digests.
Without it, values are case-folded with Arrow's ASCII kernel and measured from their offsets
when the column is ASCII; only values holding whitespace other than single spaces between
words (or Unicode whitespace) go through the split-and-join normalization. Punctuation-
separated words are cut from the bytes with NumPy (the ASCII letters and digits that RE2's
``[\\W_]+`` leaves), not with a regular expression. A column whose values repeat (judged on
a sample) is made distinct first (the compiled helper leaves out the values shorter than
``MIN_TOKEN`` bytes, which have no digest); when few values remain, their digests are kept
for the column's next batch, which reuses them if it holds the same set of values (a
column of categories); others are hashed as they come (a keyed multiply-xorshift
hash, :func:`_digest`, the same in C and NumPy) and their digests kept unsorted in NumPy
arrays: duplicates are dropped only when the digests reach their budget, and the sets are
compared once, at the end, through a bitmap of digest bits that lets only a few percent of
the output digests through to the exact comparison. Memory grows with the number of
distinct masked values, about 8 bytes each (plus the candidates of output strings), not
with rows.
"""

from __future__ import annotations

import math
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from biomask._native import KERNELS_SWITCH, load
from biomask.policies import Policy

__all__ = ["TOP_CATEGORIES", "EvidenceCollector", "native_available"]

#: lineage's compiled helper (built from lineage/_evidence.c)
EVIDENCE_HELPER = "biomask.lineage._evidence"


def _native() -> ModuleType | None:
    """The compiled scan when it is built and not switched off (``BIOMASK_NATIVE_KERNELS=0``,
    read on every call), else None."""
    return load(EVIDENCE_HELPER, KERNELS_SWITCH)


def native_available() -> bool:
    """Whether the residual-PII scan runs in lineage's compiled helper."""
    return _native() is not None


TOP_CATEGORIES = 40
"""Categories kept per distribution; the rest are summed as ``(other)``."""

MIN_TOKEN = 3
"""Shorter strings are not scanned: too short to identify anyone, and pure noise."""

# Inputs that are not used as residual-PII probes. A shifted date or an age band lives in
# the same value space as the input by design and can equal another record's real value
# without leaking anything; free text keeps its non-PII words on purpose (a note "fine"
# stays "fine"), and the PII inside it is probed through the linked columns instead.
_NOT_PROBES = frozenset({"keep", "date_shift", "generalize", "text"})
# Operators whose outputs are tokens/pseudonyms in the value space of a domain: a match
# between such an output and a real value of the same domain can be a coincidence.
#: rules whose output can carry an input value inside a longer string (n-gram scanned)
_FREE_TEXT_OPS = frozenset({"keep", "text", "redact", "mask"})
_TOKEN_OPS = frozenset({"tokenize", "pseudonym", "email", "phone", "hash"})
# Masking operators whose output should differ from the input in place.
_INPLACE_OPS = frozenset({"tokenize", "pseudonym", "email", "phone", "hash", "mask", "redact"})
_STRIP = "\"'`.,;:!?()[]{}<>"
NULL_LABEL = "(null)"
OTHER_LABEL = "(other)"

_U64_MAX = int(np.iinfo(np.uint64).max)
_EMPTY = np.zeros(0, dtype=np.uint64)
# The scan's digest (see _digest); the same constants as _evidence.c's.
_P0 = np.uint64(0x9E3779B97F4A7C15)
_P1 = np.uint64(0xBF58476D1CE4E5B9)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
#: r -> the low r bytes of a 64-bit word (r = 0..8)
_LOW = np.array([(1 << (8 * r)) - 1 for r in range(9)], dtype=np.uint64)
#: byte -> whether it is one of ``_STRIP``'s (ASCII) characters
_IS_STRIP = np.zeros(256, dtype=bool)
_IS_STRIP[list(_STRIP.encode())] = True
#: values sampled to judge whether a column repeats enough to be made distinct first
_SAMPLE = 256
#: batches of a column that follow its sampled verdict before it is sampled again
_RESAMPLE = 16
#: rows of per-batch k-anonymity group counts kept before they are merged
_MERGE_ROWS = 1 << 18
#: distinct values of a column's batch kept (with their digests) to be recognized in its
#: next batch: enough for categories, cheap to compare
_REUSE_MAX = 4096


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _is_integer(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_integer(t.value_type)
    return bool(pa.types.is_integer(t))


def _as_text(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Integers as their decimal strings: a key's value the way it is scanned."""
    return pc.cast(_decoded(col), pa.string())


#: integer input columns probed: identifier rules (their raw values must not survive)
_ID_OPS = frozenset({"tokenize", "hash"})
#: names that say "identifier" (``volunteer_id``, ``SubjectID``, ``ref_no``): a kept
#: integer column so named can be a raw key; other kept integers (a height, a count) are
#: not scanned, or every one that falls inside a range of ids would be a false hit
_ID_NAME = re.compile(r"(?i:(?:^|_)(?:id|ids|no|nr|num|number|serial|key|ref))$|[a-z]Id$|ID$")


def _decoded(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(arr.type):
        return arr.cast(arr.type.value_type)
    return arr


def _label(v: Any) -> str:
    return NULL_LABEL if v is None else str(v)


def _unique(a: np.ndarray) -> np.ndarray:
    """Distinct digests, in no particular order (Polars' hash-based unique: no sort)."""
    if a.size < 2:
        return a
    return pl.Series(a, dtype=pl.UInt64).unique().to_numpy()


def _merge_counts(tables: list[pa.Table]) -> pa.Table:
    """Group counts of several batches as one table (same keys: counts summed)."""
    if len(tables) == 1:
        return tables[0]
    keys = [n for n in tables[0].column_names if n != "count_all"]
    merged = pa.concat_tables(tables).group_by(keys).aggregate([("count_all", "sum")])
    return merged.rename_columns([*keys, "count_all"])


def _offsets_data(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's value offsets (int64, into the data buffer) and its data bytes."""
    bufs = arr.buffers()
    if bufs[1] is None:  # no values
        return np.zeros(len(arr) + 1, dtype=np.int64), np.zeros(0, np.uint8)
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    off = np.frombuffer(bufs[1], dtype=width, count=arr.offset + len(arr) + 1)[arr.offset :]
    data = bufs[2]
    full = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return off.astype(np.int64, copy=False), full


def _key(seed: int) -> tuple[int, int]:
    """The digest's two 64-bit key words, spread from the run's random seed (SplitMix64)."""
    out = []
    for i in (1, 2):
        z = (seed + i * 0x9E3779B97F4A7C15) & _U64_MAX
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MAX
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64_MAX
        out.append(z ^ (z >> 31))
    return out[0], out[1]


def _digest(off: np.ndarray, full: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """Keyed 64-bit digests of the values ``full[off[i]:off[i + 1]]`` (NumPy).

    The same function as ``_evidence.ev_hash`` (bit for bit): the bytes in 8-byte
    little-endian words (the last zero-padded) folded in with a multiply and a shift each,
    ``h = ((h ^ w) * P1) ^ >> 31`` from ``h = k0 ^ len * P0``, and MurmurHash3's 64-bit
    finalizer over ``h ^ k1``. The values are put in order of decreasing word count, so
    that the values still that long at word ``j`` are a prefix (slices, not gathers), and
    word ``j`` of all of them is read at once through an overlapping, unaligned view of
    the bytes (an 8-byte word at every offset).
    """
    n = off.size - 1
    if n <= 0:
        return _EMPTY
    base = int(off[0])
    lens = np.diff(off)
    padded = np.zeros(int(off[-1]) - base + 8, dtype=np.uint8)
    padded[: padded.size - 8] = full[base : off[-1]]
    at = np.ndarray((padded.size - 7,), dtype="<u8", buffer=padded, strides=(1,))
    words = (lens + 7) >> 3
    most = int(words.max())
    order = np.argsort(
        (most - words).astype(np.uint16 if most < 1 << 16 else np.int64), kind="stable"
    )
    start = off[:-1][order] - base
    size = lens[order]
    h = size.astype(np.uint64) * _P0
    h ^= np.uint64(k0)
    # live[j]: how many values have more than j words (a prefix, in this order)
    live = n - np.cumsum(np.bincount(words, minlength=most + 1))
    for j in range(most):
        m, ends = int(live[j]), int(live[j + 1])
        w = at[start[:m] + 8 * j].astype(np.uint64, copy=False)
        if ends < m:  # the values whose last word this is: zero past their end
            w[ends:m] &= _LOW[size[ends:m] - 8 * j]
        x = h[:m]
        x ^= w
        x *= _P1
        x ^= x >> np.uint64(31)
    h ^= np.uint64(k1)
    for mul in (_F1, _F2):
        h ^= h >> np.uint64(33)
        h *= mul
    h ^= h >> np.uint64(33)
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def _key_bytes(k0: int, k1: int) -> bytes:
    return k0.to_bytes(8, "little") + k1.to_bytes(8, "little")


def _values(
    col: pa.Array | pa.ChunkedArray, hint: list[int] | None = None, min_len: int = 0
) -> tuple[pa.Array, bool]:
    """The non-null values of a string column, made distinct when they repeat, and whether
    they were.

    A column is made distinct (Arrow's hash ``unique``) when a spread sample of it holds
    fewer than half as many distinct values as values: then it pays for itself in the
    normalization and hashing it spares. A column of mostly distinct values is hashed as
    it is; its duplicates only cost a digest each, removed when the digests are compacted.
    ``hint`` carries the verdict over to the column's next batches: ``[repeats (0/1),
    batches before sampling again]``, updated in place (a sample is not free either).
    Values shorter than ``min_len`` bytes may be left out (the compiled helper drops them
    while it makes a column distinct, at no cost): the scan passes ``MIN_TOKEN``, as such
    a value has fewer characters than that, and so has each of its candidates.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        used = pc.unique(col.indices).drop_null()
        col = col.dictionary.take(used)
    if col.null_count:
        col = col.drop_null()
    n = len(col)
    if n <= 2 * _SAMPLE:
        return (pc.unique(col) if n > 1 else col), True
    hint = [0, 0] if hint is None else hint
    if hint[1] <= 0:
        sample = col.take(pa.array(np.arange(0, n, n // _SAMPLE)[:_SAMPLE]))
        hint[:] = [int(2 * len(pc.unique(sample)) < len(sample)), _RESAMPLE]
    hint[1] -= 1
    return (_distinct(col, min_len), True) if hint[0] else (col, False)


#: key of the compiled helper's table of distinct values (not of any digest that is kept):
#: random so that no input can be made to pile up in one slot
_DISTINCT_KEY = secrets.token_bytes(16)


def _distinct(col: pa.Array, min_len: int = 0) -> pa.Array:
    """``pc.unique(col)`` (no nulls): the same values in the same order, with the compiled
    helper about twice as fast on columns that repeat a few values (one hash and one
    comparison per value, in a table that stays in cache). The helper also leaves out the
    values shorter than ``min_len`` bytes (a column of codes such as "M"/"F" then costs a
    length check per value); without it they are kept."""
    native = _native()
    if native is None:
        return pc.unique(col)
    off, full = _offsets_data(col)
    first = np.empty(len(col), dtype=np.int64)
    k = native.ev_distinct(off, full, _DISTINCT_KEY, first, min_len)
    return col.take(pa.array(first[:k]))


class _Scratch:
    """Reused byte buffers for the byte-level passes over a column's data.

    A fresh temporary of a megabyte costs as much in page faults as the pass that fills
    it (the allocator hands such blocks back to the system when they are freed), so the
    few that a pass needs at once are kept, one per ``slot``, and grown when a batch needs
    more. Owned by one collector, which is used from one thread at a time.
    """

    def __init__(self) -> None:
        self._bufs: list[np.ndarray] = []

    def take(self, slot: int, size: int) -> np.ndarray:
        """``size`` bytes (uint8, contents undefined) that no other slot shares."""
        while len(self._bufs) <= slot:
            self._bufs.append(np.empty(0, dtype=np.uint8))
        if self._bufs[slot].size < size:
            self._bufs[slot] = np.empty(size + size // 4, dtype=np.uint8)
        return self._bufs[slot][:size]


def _needs_split(
    rel: np.ndarray, data: np.ndarray, ascii_: bool, scratch: _Scratch | None = None
) -> np.ndarray | None:
    """Which values' normal form is not simply their lower case (None: no value's).

    Those holding whitespace other than single spaces between words: a control character
    (tab, newline, ...; every byte below 0x20 is taken, a superset), two whitespace bytes
    in a row, whitespace at either end, or one of the Unicode whitespace characters that
    Arrow's ``utf8_split_whitespace`` splits on (U+0085, U+00A0, U+1680, U+2000-200A,
    U+2028, U+2029, U+202F, U+205F, U+3000). ``rel`` are the values' offsets from
    ``data[0]``. Reductions first: positions are looked up only where something is found
    (``nonzero`` over a megabyte of spaces costs more than the rest together).
    """
    if not data.size:
        return None
    scratch = scratch or _Scratch()
    marks: list[np.ndarray] = []
    lowest = int(data.min())
    if lowest <= 0x20:
        if lowest < 0x20:
            marks.append(np.flatnonzero(data < 0x20))
        pair = scratch.take(0, data.size - 1).view(bool)
        after = scratch.take(1, data.size - 1).view(bool)
        np.less_equal(data[:-1], 0x20, out=pair)
        np.less_equal(data[1:], 0x20, out=after)
        pair &= after
        if np.count_nonzero(pair):  # (SIMD; any() is not)
            marks.append(np.flatnonzero(pair))
        nonempty = rel[1:] > rel[:-1]
        first, last = rel[:-1][nonempty], rel[1:][nonempty] - 1
        marks.append(first[data[first] <= 0x20])
        marks.append(last[data[last] <= 0x20])
    if not ascii_:
        maybe = scratch.take(0, data.size).view(bool)
        other = scratch.take(1, data.size)
        np.subtract(data, np.uint8(0xE1), out=other)  # E1-E3, and C2: lead bytes of the
        np.less_equal(other, 2, out=maybe)  # whitespace (uint8 arithmetic wraps)
        np.equal(data, 0xC2, out=other.view(bool))
        maybe |= other.view(bool)
        if np.count_nonzero(maybe):
            lead = np.flatnonzero(maybe)
            top = data.size - 1
            b0 = data[lead]
            b1 = data[np.minimum(lead + 1, top)]
            b2 = data[np.minimum(lead + 2, top)]
            ws = (b0 == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
            ws |= (b0 == 0xE1) & (b1 == 0x9A) & (b2 == 0x80)
            ws |= (b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80)
            ws |= (b0 == 0xE2) & (b1 == 0x81) & (b2 == 0x9F)
            ws |= (
                (b0 == 0xE2)
                & (b1 == 0x80)
                & (((b2 >= 0x80) & (b2 <= 0x8A)) | (b2 == 0xA8) | (b2 == 0xA9) | (b2 == 0xAF))
            )
            marks.append(lead[ws])
    pos = np.concatenate(marks) if marks else _EMPTY
    if not pos.size:
        return None
    flagged = np.zeros(rel.size - 1, dtype=bool)
    flagged[np.searchsorted(rel, pos, side="right") - 1] = True
    return flagged


def _normal(arr: pa.Array, scratch: _Scratch | None = None) -> list[tuple[pa.Array, bool]]:
    """Values whitespace-collapsed, trimmed and lower-cased, in parts (not distinct).

    The same normal form as splitting every value on whitespace, joining with one space
    and lower-casing, but only the values that hold other whitespace than single spaces
    between words are split and joined; the others are only lower-cased (with Arrow's
    ASCII kernel when the column is ASCII: the Unicode one costs 30 times more). Each
    part comes with whether it is ASCII (then its lengths in characters are in bytes).
    """
    if not len(arr):
        return []
    off, full = _offsets_data(arr)
    data = full[off[0] : off[-1]]
    ascii_ = not data.size or int(data.max()) < 0x80
    flagged = _needs_split(off - off[0], data, ascii_, scratch)
    lower = pc.ascii_lower if ascii_ else pc.utf8_lower
    if flagged is None:
        return [(lower(arr), ascii_)]
    parts: list[tuple[pa.Array, bool]] = []
    if not flagged.all():
        parts.append((lower(arr.filter(pa.array(~flagged))), ascii_))
    slow = arr.filter(pa.array(flagged))
    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(slow))
    joined = pc.binary_join(words, pa.scalar(" ", slow.type))
    parts.append((pc.utf8_lower(joined), ascii_))
    return parts


def _long(arr: pa.Array, ascii_: bool) -> np.ndarray:
    """Mask of the values at least ``MIN_TOKEN`` characters long.

    From the byte lengths (the offsets): a character takes one to four bytes, so only
    values of ``MIN_TOKEN`` to ``4 * MIN_TOKEN - 4`` bytes of a non-ASCII column need
    their characters counted.
    """
    size = np.diff(_offsets_data(arr)[0])
    if ascii_:
        return size >= MIN_TOKEN
    long_ = size > 4 * (MIN_TOKEN - 1)
    unsure = np.flatnonzero((size >= MIN_TOKEN) & ~long_)
    if unsure.size:
        chars = pc.utf8_length(arr.take(pa.array(unsure))).to_numpy(zero_copy_only=False)
        long_[unsure] = chars >= MIN_TOKEN
    return long_


def _words(arr: pa.Array, scratch: _Scratch | None = None) -> pa.Array:
    """Every run of at least ``MIN_TOKEN`` ASCII letters and digits inside the values.

    The pieces that splitting on the regular expression ``[\\W_]+`` leaves (RE2's ``\\w``
    is ASCII: any other character separates, as do the bytes of a multi-byte one), found
    in the data buffer with NumPy: a regex split costs ten times more.
    """
    off, full = _offsets_data(arr)
    base = off[0]
    data = full[base : off[-1]]
    size = data.size
    if not size:
        return pa.array([], pa.large_string())
    scratch = scratch or _Scratch()
    work = scratch.take(0, size)
    alnum = scratch.take(1, size).view(bool)
    np.subtract(data, np.uint8(48), out=work)  # digits: 0-9 (uint8 arithmetic wraps)
    np.less(work, 10, out=alnum)
    np.bitwise_or(data, np.uint8(0x20), out=work)  # letters, folded: a-z
    np.subtract(work, np.uint8(97), out=work)
    np.less(work, 26, out=work.view(bool))
    alnum |= work.view(bool)
    cut = scratch.take(2, size + 1).view(bool)
    np.not_equal(alnum[1:], alnum[:-1], out=cut[1:size])
    cut[0] = cut[size] = True
    cut[off - base] = True
    bounds = np.flatnonzero(cut)
    starts, ends = bounds[:-1], bounds[1:]
    keep = alnum[starts] & (ends - starts >= MIN_TOKEN)
    segments = pa.LargeStringArray.from_buffers(
        len(starts), pa.py_buffer(bounds + base), arr.buffers()[2]
    )
    return segments.filter(pa.array(keep))


@dataclass
class _Rule:
    op: str
    masks: bool
    qi: bool
    domains: frozenset[str] = frozenset()


#: digests the residual-PII scan holds after a compaction at most (8 bytes each: 32 MiB);
#: past it, the scan keeps a consistent hash-based sample so memory stays bounded by the
#: batch size. Digests are added undeduplicated and compacted when half as many again
#: have come in since (so at most 1.5 times this, plus one batch, are held at once).
SCAN_BUDGET = 4_000_000


@dataclass
class EvidenceCollector:
    """Collects the dossier's evidence for one run; holds no data value after ``finish``.

    Parameters
    ----------
    policy:
        Names the quasi-identifier columns and what each column's rule does.
    scan:
        Whether to run the residual-PII scan (off for ``unmask``, whose output is meant to
        hold the originals).
    """

    policy: Policy | None
    scan: bool = True
    _seed: int = field(default_factory=lambda: secrets.randbits(64), repr=False)
    _threshold: int = field(default=_U64_MAX)
    _held: int = 0
    _limit: int = -1
    _before: dict[str, Counter[str]] = field(default_factory=dict)
    _after: dict[str, Counter[str]] = field(default_factory=dict)
    #: table -> number of QI columns -> per-batch group counts (merged past _MERGE_ROWS)
    _combos: dict[str, dict[int, list[pa.Table]]] = field(default_factory=dict)
    _combo_cols: dict[str, list[str]] = field(default_factory=dict)
    _inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _last_input: dict[str, pa.RecordBatch] = field(default_factory=dict)
    _unchanged: Counter[str] = field(default_factory=Counter)
    _compared: Counter[str] = field(default_factory=Counter)
    _unaligned: int = 0
    _rules_cache: dict[str, dict[str, _Rule]] = field(default_factory=dict)
    _scratch: _Scratch = field(default_factory=_Scratch, repr=False)
    _hints: dict[str, list[int]] = field(default_factory=dict)
    #: column -> its last batch's distinct values, whether with candidates, their digests
    _last_sets: dict[str, tuple[pa.Array, bool, np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    _id_names: frozenset[str] | None = None

    def __repr__(self) -> str:  # never show the key
        return "EvidenceCollector()"

    # -- rules -----------------------------------------------------------------------------
    def _rules(self, table: str) -> dict[str, _Rule]:
        if table in self._rules_cache:
            return self._rules_cache[table]
        rules: dict[str, _Rule] = {}
        if self.policy is not None:
            specs = self.policy.table_specs()
            spec = specs.get(table)
            if spec is None and len(specs) == 1:
                spec = next(iter(specs.values()))
            if spec is not None:
                for name, rule in spec.columns.items():
                    domains = {rule.domain_name} if rule.domain_name else set()
                    if rule.op == "text":
                        domains |= set(getattr(rule, "entities", {}).values())
                    rules[name] = _Rule(
                        op=rule.op,
                        masks=rule.masks,
                        qi=rule.quasi_identifier,
                        domains=frozenset(domains),
                    )
        self._rules_cache[table] = rules
        return rules

    def qi_columns(self, table: str) -> dict[str, str]:
        """QI column -> how it is charted: ``before_after``, ``after_only``."""
        out: dict[str, str] = {}
        for name, r in self._rules(table).items():
            if not r.qi:
                continue
            if r.op == "keep":
                out[name] = "before_after"
            elif r.op == "generalize":
                out[name] = "after_only"
        return out

    def withheld_qi_columns(self, table: str) -> dict[str, str]:
        """QI columns not charted (masked by an operator whose values are not shown)."""
        return {
            n: r.op
            for n, r in self._rules(table).items()
            if r.qi and r.op not in ("keep", "generalize")
        }

    # -- hashing ---------------------------------------------------------------------------
    def _hash(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Keyed 64-bit digests of strings, one per value (none may be null).

        This run's digest (see :func:`_digest`) under a key drawn at random per run:
        equal strings hash equal on the input and the output side, which is all the scan
        compares. It is not collision resistant against someone who knows the key, but a
        collision can only add a false hit (a reason to look), never hide a real one, and
        the key and the digests never leave the process and are dropped at ``finish``.
        """
        if not len(values):
            return _EMPTY
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        off, full = _offsets_data(values)
        native = _native()
        k0, k1 = _key(self._seed)
        if native is None:
            return _digest(off, full, k0, k1)
        out = np.empty(len(values), dtype=np.uint64)
        native.ev_hash(off, full, _key_bytes(k0, k1), out)
        return out

    def _digests(self, values: pa.Array, candidates: bool) -> np.ndarray:
        """Digests of a column's normalized values (at least ``MIN_TOKEN`` characters long)
        and, with ``candidates``, of their candidates; empty when no value is long enough.

        With the compiled helper, the values whose normal form is their ASCII lower case
        (most) are normalized, hashed and cut into candidates in one pass in C, and so,
        without ``candidates``, are those whose only non-ASCII characters are U+00C0-U+00FF
        (their digests among the others', in row order: the digests are compared as a
        set, in no order); the others take the Arrow path, in the same parts as without it
        (the non-ASCII ones with the plain values, the ones to split and join on their
        own), so both paths give the same digests, duplicates included.
        """
        native = _native()
        if native is None or not len(values):
            normal = _normal(values, self._scratch)
            whole = self._whole(normal)
            if candidates and whole.size:
                whole = np.concatenate([whole, self._candidates(normal)])
            return whole
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        off, full = _offsets_data(values)
        n = len(values)
        # (scratch: the candidates are copied out by the concatenation below; the whole
        # values' digests go to a new array, kept as it is when they are all there is)
        status = self._scratch.take(3, n)
        whole = np.empty(n, dtype=np.uint64)
        # at most 2 per byte and 2 per value: see _evidence.c's candidates()
        cap = 2 * int(off[-1] - off[0]) + 2 * n if candidates else 0
        cand = self._scratch.take(5, 8 * cap).view(np.uint64)
        key = _key_bytes(*_key(self._seed))
        n_whole, n_cand, spaced, n_slow = native.ev_scan(
            off, full, key, candidates, status, whole, cand
        )
        wholes, cands = [whole[:n_whole]], [cand[:n_cand]]
        if n_slow:
            parts: list[tuple[pa.Array, bool]] = []
            modes: list[bool | None] = []
            other = np.flatnonzero(status == 1)
            if other.size:  # with the plain values in the other path: their space mode
                parts.append((pc.utf8_lower(values.take(pa.array(other))), False))
                modes.append(bool(spaced))
            split = np.flatnonzero(status == 2)
            if split.size:
                slow = values.take(pa.array(split))
                words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(slow))
                joined = pc.binary_join(words, pa.scalar(" ", slow.type))
                parts.append((pc.utf8_lower(joined), False))
                modes.append(None)
            wholes.append(self._whole(parts))
            if candidates:
                cands.append(self._candidates(parts, modes))
        if not any(w.size for w in wholes):
            return _EMPTY
        if candidates:
            return np.concatenate([*wholes, *cands])
        if len(wholes) > 1 or 2 * n_whole < n:  # (not a view that holds twice its size)
            return np.concatenate(wholes)
        return wholes[0]

    def _column_digests(
        self, key: str, col: pa.Array | pa.ChunkedArray, candidates: bool
    ) -> np.ndarray:
        """:meth:`_digests` of a column's values (:func:`_values`), or the same digests as
        its previous batch when that batch held the same distinct values.

        The digests (duplicates included, which count against the budget) depend only on
        the set of values given, not on their order or rows, so a column of categories (a
        city, a modality: the same few values in batch after batch) is normalized, hashed
        and cut into candidates once: recognizing the set costs a hash lookup per distinct
        value, where hashing it again costs a pass in C and, for its non-ASCII values, a
        dozen Arrow calls.
        """
        hint = self._hints.setdefault(key, [0, 0])
        values, distinct = _values(col, hint, MIN_TOKEN)
        if not distinct or len(values) > _REUSE_MAX:
            return self._digests(values, candidates)
        last = self._last_sets.get(key)
        if (
            last is not None
            and last[1] == candidates
            and len(last[0]) == len(values)
            and last[0].type == values.type
            and (not len(values) or pc.all(pc.is_in(values, value_set=last[0])).as_py())
        ):
            return last[2]
        digests = self._digests(values, candidates)
        self._last_sets[key] = (values, candidates, digests)
        return digests

    def _whole(self, parts: list[tuple[pa.Array, bool]]) -> np.ndarray:
        """Digests of the normalized values at least ``MIN_TOKEN`` characters long."""
        out = [self._hash(p)[_long(p, ascii_)] for p, ascii_ in parts if len(p)]
        return np.concatenate(out) if out else _EMPTY

    def _candidates(
        self, parts: list[tuple[pa.Array, bool]], spaced: list[bool | None] | None = None
    ) -> np.ndarray:
        """Digests of every normalized output string's candidates besides the whole value.

        Its space-separated tokens stripped of punctuation and 2-3 token n-grams of those
        (so a masked "ada lovelace" is found inside free text); and its punctuation-
        separated words (a surname inside "lovelace-smith"), which are the runs of ASCII
        letters and digits of the whole value. A value without a space is its own only
        token: it is a candidate already unless it starts or ends with punctuation.
        Whether a part holds a space is judged on its data unless ``spaced`` says it
        (the parts the compiled helper leaves share the plain values' verdict).
        """
        out: list[np.ndarray] = []
        modes = spaced or [None] * len(parts)
        for (norm, ascii_), mode in zip(parts, modes, strict=True):
            if not len(norm):
                continue
            words = _words(norm, self._scratch)
            out.append(self._hash(words))
            off, full = _offsets_data(norm)
            data = full[off[0] : off[-1]]
            if not data.size:
                continue
            if mode is None:
                spaces = self._scratch.take(0, data.size).view(bool)
                mode = bool(np.count_nonzero(np.equal(data, 0x20, out=spaces)))
            if not mode:
                rel = off - off[0]
                nonempty = rel[1:] > rel[:-1]
                edged = np.zeros(len(norm), dtype=bool)
                edged[nonempty] = (
                    _IS_STRIP[data[rel[:-1][nonempty]]] | _IS_STRIP[data[rel[1:][nonempty] - 1]]
                )
                if edged.any():
                    tokens = pc.utf8_trim(norm.filter(pa.array(edged)), _STRIP)
                    out.append(self._hash(tokens)[_long(tokens, ascii_)])
                continue
            tokens_list = pc.split_pattern(norm, " ")
            tokens = pc.utf8_trim(pc.list_flatten(tokens_list), _STRIP)
            parents = pc.list_parent_indices(tokens_list).to_numpy()
            grams = [tokens]
            for n in (2, 3):
                m = len(tokens) - n + 1
                if m <= 0:
                    break
                same = np.ones(m, dtype=bool)
                for j in range(1, n):
                    same &= parents[:m] == parents[j : j + m]
                if not same.any():
                    break
                sep = pa.scalar(" ", tokens.type)
                joined = pc.binary_join_element_wise(*[tokens.slice(j, m) for j in range(n)], sep)
                grams.append(joined.filter(pa.array(same)))
            for g in grams:
                out.append(self._hash(g)[_long(g, ascii_)])
        return np.concatenate(out) if out else _EMPTY

    def _store(self, bucket: dict[str, list[np.ndarray]], key: str, digests: np.ndarray) -> None:
        """Keep the digests under the sampling threshold; compact past the budget."""
        if self._threshold != _U64_MAX:
            digests = digests[digests <= self._threshold]
        bucket.setdefault(key, []).append(digests)
        self._held += int(digests.size)
        if self._held > (SCAN_BUDGET if self._limit < 0 else self._limit):
            self._compact()

    def _compact(self) -> None:
        """Drop duplicate digests; halve the sampling threshold while over the budget.

        Only distinct digests count against ``SCAN_BUDGET``, so a sample is taken only
        when more distinct values than that have been seen. The next compaction comes when
        half the budget again has been added, so compacting stays linear in the input.
        """
        buckets = (self._inputs, self._outputs)
        for b in buckets:
            for k, arrs in b.items():
                b[k] = [_unique(np.concatenate(arrs))] if arrs else []
        held = sum(a.size for b in buckets for arrs in b.values() for a in arrs)
        while held > SCAN_BUDGET:
            self._threshold //= 2
            for b in buckets:
                for k, arrs in b.items():
                    b[k] = [a[a <= self._threshold] for a in arrs]
            held = sum(a.size for b in buckets for arrs in b.values() for a in arrs)
        self._held = held
        self._limit = max(SCAN_BUDGET, held + SCAN_BUDGET // 2)

    @property
    def scan_fraction(self) -> float:
        """Fraction of the digest space the scan still covers (1.0 until the budget binds)."""
        return float(self._threshold) / float(_U64_MAX)

    # -- observation -----------------------------------------------------------------------
    def observe_input(self, table: str, batch: pa.RecordBatch) -> None:
        """Count kept QI values; hash distinct values of masked string columns."""
        rules = self._rules(table)
        for name, how in self.qi_columns(table).items():
            if how == "before_after" and name in batch.schema.names:
                self._count(self._before, f"{table}.{name}", batch.column(name))
        if not self.scan:
            return
        self._last_input[table] = batch  # for the in-place check; replaced every batch
        for name in batch.schema.names:
            r = rules.get(name)
            if r is None or not r.masks or r.op in _NOT_PROBES:
                continue
            col = batch.column(name)
            if _is_integer(col.type) and r.op in _ID_OPS:
                col = _as_text(col)  # an integer key: found again if a kept key holds it
            elif not _is_string(col.type):
                continue
            probes = self._column_digests(f"in:{table}.{name}", col, candidates=False)
            if probes.size:
                self._store(self._inputs, f"{table}.{name}", probes)

    def observe_output(self, table: str, batch: pa.RecordBatch) -> None:
        """Count QI values and QI combinations; collect output candidate hashes."""
        qis = [n for n in self.qi_columns(table) if n in batch.schema.names]
        for name in qis:
            self._count(self._after, f"{table}.{name}", batch.column(name))
        if qis and batch.num_rows:
            self._combo_cols[table] = qis
            # Counted in Arrow: no Python loop over the combinations, however many there
            # are. Nulls are labelled as in the distributions, so they count as one value.
            keys = [f"c{i}" for i in range(len(qis))]
            grouped = (
                pa.table(
                    {
                        k: pc.fill_null(_decoded(batch.column(n)).cast(pa.string()), NULL_LABEL)
                        for k, n in zip(keys, qis, strict=True)
                    }
                )
                .group_by(keys)
                .aggregate([([], "count_all")])
            )
            counts = self._combos.setdefault(table, {}).setdefault(len(keys), [])
            counts.append(grouped)
            if sum(t.num_rows for t in counts) > _MERGE_ROWS:
                counts[:] = [_merge_counts(counts)]
        if not self.scan:
            return
        rules = self._rules(table)
        self._check_in_place(table, batch, rules)
        for name in batch.schema.names:
            col = batch.column(name)
            r = rules.get(name)
            number = _is_integer(col.type)
            if number and (
                (r is not None and r.op in _ID_OPS)
                or ((r is None or r.op == "keep") and self._key_like(name))
            ):
                # a kept integer column can be a raw key (a foreign key drafted as a
                # measurement); integer tokens are scanned so a match can be explained
                col = _as_text(col)
            elif not _is_string(col.type):
                continue
            # Only free or passed-through text can hide a value inside a longer string; a
            # token column is checked whole (and row by row, in place). A column with no
            # value long enough has no candidate either (none is longer than its value).
            free = not number and (r is None or r.op in _FREE_TEXT_OPS)
            whole = self._column_digests(f"out:{table}.{name}", col, candidates=free)
            if not whole.size:
                continue
            self._store(self._outputs, f"{table}.{name}", whole)

    def _key_like(self, name: str) -> bool:
        """Whether a kept integer column can be a raw key: an identifier's name, or the
        name of a column some table of the policy tokenizes or hashes."""
        if self._id_names is None:
            names: set[str] = set()
            if self.policy is not None:
                for spec in self.policy.table_specs().values():
                    names |= {n for n, r in spec.columns.items() if r.op in _ID_OPS}
            self._id_names = frozenset(names)
        return name in self._id_names or _ID_NAME.search(name) is not None

    def _check_in_place(self, table: str, batch: pa.RecordBatch, rules: dict[str, _Rule]) -> None:
        """Count values that a masking rule left unchanged in their row.

        Only possible when the output rows line up with the input batch's rows (nothing
        of that batch went to quarantine); other batches are counted as not aligned.
        """
        before = self._last_input.pop(table, None)
        if before is None:
            return
        if before.num_rows != batch.num_rows:
            self._unaligned += 1
            return
        for name in batch.schema.names:
            r = rules.get(name)
            if r is None or r.op not in _INPLACE_OPS or name not in before.schema.names:
                continue
            a, b = _decoded(before.column(name)), _decoded(batch.column(name))
            if a.type != b.type:
                continue
            eq = pc.equal(a, b)
            key = f"{table}.{name}"
            self._unchanged[key] += int(pc.sum(eq).as_py() or 0)
            self._compared[key] += len(eq) - eq.null_count

    @staticmethod
    def _count(target: dict[str, Counter[str]], key: str, col: pa.Array | pa.ChunkedArray) -> None:
        vc = pc.value_counts(_decoded(col))
        counter = target.setdefault(key, Counter())
        for item in vc.to_pylist():
            counter[_label(item["values"])] += int(item["counts"])

    # -- results ---------------------------------------------------------------------------
    @staticmethod
    def _top(counter: Counter[str]) -> dict[str, int]:
        if len(counter) <= TOP_CATEGORIES:
            return dict(sorted(counter.items()))
        top = dict(counter.most_common(TOP_CATEGORIES - 1))
        rest = sum(counter.values()) - sum(top.values())
        top[OTHER_LABEL] = rest
        return dict(sorted(top.items()))

    def distributions(self) -> dict[str, dict[str, Any]]:
        """``table.column -> {before, after, before_total, after_total, shift_pp}``."""
        out: dict[str, dict[str, Any]] = {}
        for key in sorted(set(self._before) | set(self._after)):
            before = self._before.get(key)
            after = self._after.get(key, Counter())
            entry: dict[str, Any] = {
                "before": self._top(before) if before is not None else None,
                "after": self._top(after),
                "before_total": sum(before.values()) if before is not None else None,
                "after_total": sum(after.values()),
            }
            shifts: dict[str, float] = {}
            if before is not None:
                bt = max(sum(before.values()), 1)
                at = max(sum(after.values()), 1)
                for cat in sorted(set(entry["before"]) | set(entry["after"])):
                    b = entry["before"].get(cat, 0) / bt * 100
                    a = entry["after"].get(cat, 0) / at * 100
                    shifts[cat] = round(a - b, 3)
            entry["shift_pp"] = shifts
            entry["max_abs_shift_pp"] = max((abs(v) for v in shifts.values()), default=0.0)
            out[key] = entry
        return out

    def k_anonymity(self) -> dict[str, dict[str, Any]]:
        """Per table: QI columns, k (smallest group), number of groups, rows in groups < 5."""
        out: dict[str, dict[str, Any]] = {}
        for table in sorted(self._combos):
            per_width = self._combos[table].values()
            merged = [_merge_counts(c).column("count_all").to_numpy() for c in per_width if c]
            sizes = np.concatenate(merged) if merged else np.zeros(0, dtype=np.int64)
            small = sizes[sizes < 5]
            out[table] = {
                "columns": list(self._combo_cols.get(table, [])),
                "k": int(sizes.min()) if sizes.size else 0,
                "groups": int(sizes.size),
                "rows": int(sizes.sum()),
                "groups_below_5": int(small.size),
                "rows_in_groups_below_5": int(small.sum()),
            }
        return out

    def residual_scan(self) -> dict[str, Any]:
        """Hits and coincidences per (output, input) column pair; no value, no digest."""
        in_place = {
            k: {"unchanged": self._unchanged[k], "compared": self._compared[k]}
            for k in sorted(self._compared)
        }
        if not self.scan:
            return {
                "performed": False,
                "reason": "not run for this command (its output holds the originals)",
                "hits": 0,
                "coincidences": 0,
                "findings": [],
                "input_columns": [],
                "output_columns": [],
                "unchanged_in_place": {},
            }
        in_cols, out_cols = sorted(self._inputs), sorted(self._outputs)
        found_in, found_out = _common(
            [self._inputs[k] for k in in_cols], [self._outputs[k] for k in out_cols]
        )
        ins = dict(zip(in_cols, found_in, strict=True))
        outs = dict(zip(out_cols, found_out, strict=True))
        findings = []
        hits = coincidences = 0
        for out_col in out_cols:
            if not outs[out_col].size:
                continue
            for in_col in in_cols:
                if not ins[in_col].size:
                    continue
                match = np.intersect1d(outs[out_col], ins[in_col], assume_unique=True)
                if not match.size:
                    continue
                if self._rule(out_col).op in _TOKEN_OPS:
                    # The masker generated these strings; equal to a real value by chance.
                    n_coinc = int(match.size)
                else:
                    # Tokens issued in the input's domain: all of a token column's outputs.
                    # Only the digests found on both sides are kept, and a match is one.
                    explain = [
                        outs[k]
                        for k in self._same_domain(in_col)
                        if k in outs and self._rule(k).op in _TOKEN_OPS
                    ]
                    n_coinc = int(np.isin(match, np.concatenate(explain)).sum()) if explain else 0
                n_hits = int(match.size - n_coinc)
                hits += n_hits
                coincidences += n_coinc
                findings.append(
                    {
                        "output_column": out_col,
                        "input_column": in_col,
                        "hits": n_hits,
                        "coincidences": n_coinc,
                    }
                )
        return {
            "performed": True,
            "sampled_fraction": round(self.scan_fraction, 6),
            "method": (
                "keyed 64-bit digests (a multiply-xorshift hash under a random per-run "
                "key, kept in memory only) of every distinct "
                "value of masked string columns, compared with every output string value, "
                "its whitespace/punctuation-separated tokens and 2-3 token n-grams "
                f"(case-folded, at least {MIN_TOKEN} characters). A match inside a column of "
                "tokens or pseudonyms, or one that is itself a token or pseudonym issued in "
                "the input column's domain, is counted as a coincidence, not a hit (values "
                "left unchanged in place are counted row by row instead). date_shift, "
                "generalize and text inputs are not probes (their outputs share the input "
                "value space by design)."
            ),
            "input_columns": in_cols,
            "output_columns": out_cols,
            "hits": hits,
            "coincidences": coincidences,
            "findings": findings,
            "unchanged_in_place": in_place,
            "unaligned_batches": self._unaligned,
        }

    def _rule(self, col: str) -> _Rule:
        table, _, name = col.partition(".")
        return self._rules_cache.get(table, {}).get(name) or _Rule("unknown", True, False)

    def _same_domain(self, in_col: str) -> list[str]:
        """Output columns whose issued tokens live where ``in_col``'s real values live."""
        rule = self._rule(in_col)
        out = [in_col]
        if not rule.domains:
            return out
        for t, rules in self._rules_cache.items():
            for n, r in rules.items():
                if r.op in _TOKEN_OPS and r.domains & rule.domains:
                    out.append(f"{t}.{n}")
        return out

    def finish(self) -> dict[str, Any]:
        """All evidence as a JSON-ready dict; forgets the hash seed and the digests."""
        qi_info: dict[str, Any] = {}
        for table in sorted(self._rules_cache):
            charted = self.qi_columns(table)
            withheld = self.withheld_qi_columns(table)
            if charted or withheld:
                qi_info[table] = {"charted": charted, "withheld": withheld}
        result = {
            "quasi_identifiers": qi_info,
            "distributions": self.distributions(),
            "k_anonymity": self.k_anonymity(),
            "residual_pii": self.residual_scan(),
        }
        self._seed = 0
        self._inputs.clear()
        self._outputs.clear()
        self._last_input.clear()
        self._last_sets.clear()
        self._scratch = _Scratch()  # the last batch's bytes
        return result


def _slots(digests: np.ndarray, bits: int, shift: int) -> np.ndarray:
    """``bits`` bits of each digest, from bit ``shift`` up, as table indices."""
    top = digests >> np.uint64(shift)
    if shift + bits < 64:
        top &= np.uint64((1 << bits) - 1)
    return top.view(np.int64)  # below 2^bits: the same numbers


class _Bitmap:
    """A set of digests that answers "maybe" for all members and a few others.

    One byte per slot, 16 slots per key (a non-member passes with probability 1/16) up to
    2^22 slots (4 MiB: a larger table no longer fits the caches and costs more than the
    next stage saves). The digests are uniform, so any of their bits index it; each stage
    of :func:`_common` takes different ones.
    """

    def __init__(self, keys: list[np.ndarray], shift: int) -> None:
        n = sum(k.size for k in keys)
        self.bits = min(max(math.ceil(math.log2(max(n, 1) * 16)), 10), 22)
        self.shift = min(shift, 64 - self.bits)
        self.table = np.zeros(1 << self.bits, dtype=bool)
        for k in keys:
            self.table[_slots(k, self.bits, self.shift)] = True

    def maybe(self, probes: np.ndarray) -> np.ndarray:
        """The probes that may be members."""
        hit: np.ndarray = probes[self.table[_slots(probes, self.bits, self.shift)]]
        return hit


def _common(
    inputs: list[list[np.ndarray]], outputs: list[list[np.ndarray]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per column, the distinct digests that occur both in some input and in some output.

    No sort of the whole sets: a bitmap of the input digests lets through the output
    digests that may be among them (a few percent), a bitmap of those the input digests
    that may match them, and two more bitmaps over these survivors leave about the
    matches alone, which are then compared exactly.
    """
    ins = [[a for a in arrs if a.size] for arrs in inputs]
    outs = [[a for a in arrs if a.size] for arrs in outputs]
    if not any(ins) or not any(outs):
        return [_EMPTY] * len(inputs), [_EMPTY] * len(outputs)

    native = _native()

    def keep(
        cols: list[list[np.ndarray]], among: list[list[np.ndarray]], shift: int
    ) -> list[list[np.ndarray]]:
        if native is None:
            bitmap = _Bitmap([a for arrs in among for a in arrs], shift)
            return [[bitmap.maybe(a) for a in arrs] for arrs in cols]
        # The same filter in C with one bit per slot (a table 8 times smaller, for the
        # same slots per key): exact once the survivors are compared at the end.
        n = sum(a.size for arrs in among for a in arrs)
        bits = min(max(math.ceil(math.log2(max(n, 1) * 16)), 6), 25)
        shift = min(shift, 64 - bits)
        table = np.zeros(1 << (bits - 3), dtype=np.uint8)
        for arrs in among:
            for a in arrs:
                native.ev_bits(np.ascontiguousarray(a), shift, table)
        # the survivors land in one buffer (a few percent of the probes, in the first
        # rounds) and are copied out, so that no array holds a probe-sized block
        room = np.empty(max((a.size for arrs in cols for a in arrs), default=0), np.uint64)
        out: list[list[np.ndarray]] = []
        for arrs in cols:
            kept = []
            for a in arrs:
                k = native.ev_filter(table, shift, np.ascontiguousarray(a), room)
                kept.append(room[:k].copy())
            out.append(kept)
        return out

    outs = keep(outs, ins, 64)
    ins = keep(ins, outs, 0)
    outs = keep(outs, ins, 22)
    ins = keep(ins, outs, 44)

    def flat(cols: list[list[np.ndarray]]) -> np.ndarray:
        return np.concatenate([a for arrs in cols for a in arrs] or [_EMPTY])

    both = np.intersect1d(flat(ins), flat(outs))
    return (
        [np.intersect1d(flat([arrs]), both) for arrs in ins],
        [np.intersect1d(flat([arrs]), both) for arrs in outs],
    )
