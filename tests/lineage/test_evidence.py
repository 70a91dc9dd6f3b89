"""The evidence collector's residual-PII scan: same figures as the reference, fast paths exact.

``_evidence_reference`` is the collector as it was before the scan was made column-wide;
fed the same batches under the same seed, both must give the same evidence, digest for
digest. The fast paths (normal form without split-and-join, words cut from the bytes,
bitmap-filtered set comparison) are also checked on their own against what they replace.
"""

from __future__ import annotations

import re
import string
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomask import _native
from biomask.lineage import evidence as ev
from biomask.lineage.evidence import EVIDENCE_HELPER, EvidenceCollector
from biomask.policies import Policy, policy_from_dict
from tests.lineage._evidence_reference import EvidenceCollector as Reference
from tests.native import kernels_path

# Every character Arrow's utf8 whitespace kernels split on (checked below), and others
# that look like it but are not (ZWSP, BOM), next to letters that change length or bytes
# when lower-cased, punctuation the scan strips or splits on, and multi-byte characters.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
ALPHABET = (
    "aAbBkKzZ019 "
    + WHITESPACE
    + "-_@/.,;:!?()[]{}<>'\"`#&+*=|~$%^\\"
    + "éÉüÜßİıſﬀẞ’–—…€中文😀\u200b\ufeff\x00\x07\x7f"
)
values = st.text(alphabet=ALPHABET, max_size=14)

POLICY: dict[str, Any] = {
    "version": 1,
    "dataset": "t",
    "columns": {
        "sid": {"op": "tokenize", "domain": "subject"},
        "name": {"op": "pseudonym", "domain": "person"},
        "mail": {"op": "email", "domain": "email"},
        "code": {"op": "mask", "keep_last": 2},
        "alias": {"op": "redact"},
        "notes": {"op": "text", "entities": {"PERSON": "person"}},
        "city": {"op": "keep", "quasi_identifier": True},
        "band": {"op": "generalize", "bucket": 10, "quasi_identifier": True},
    },
}
STRING_COLS = ["sid", "name", "mail", "code", "alias", "notes", "city"]

KERNELS = _native._import(EVIDENCE_HELPER)
#: the paths every equivalence test runs: compiled (when built) and NumPy/Arrow
PATHS = [True, False] if KERNELS is not None else [False]
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="compiled kernels not built")


def _path(native: bool) -> AbstractContextManager[None]:
    """Run the block on the compiled helper or on the fallback (``BIOMASK_NATIVE_KERNELS``)."""
    return kernels_path(native)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return policy_from_dict(POLICY)


def _array(vals: list[str | None], kind: str) -> pa.Array:
    if kind == "large":
        return pa.array(vals, pa.large_string())
    if kind == "dict":
        return pa.array(vals, pa.string()).dictionary_encode()
    if kind == "sliced":  # an array that does not start at its buffers' start
        return pa.array(["pad", "pad", *vals], pa.string()).slice(2)
    return pa.array(vals, pa.string())


def _batch(cols: dict[str, list[Any]], kinds: dict[str, str]) -> pa.RecordBatch:
    arrays = {
        k: _array(v, kinds.get(k, "plain")) if k in STRING_COLS else pa.array(v, pa.int32())
        for k, v in cols.items()
    }
    return pa.RecordBatch.from_pydict(arrays)


def _reference_normal(arr: pa.Array) -> set[str]:
    arr = arr.cast(pa.string())  # the reference cannot join large_string lists
    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(arr.drop_null()))
    return set(pc.utf8_lower(pc.binary_join(words, " ")).to_pylist())


def _parts_set(arr: pa.Array) -> tuple[set[str], set[str]]:
    every, long_ = set(), set()
    for p, ascii_ in ev._normal(ev._values(arr)[0]):
        if ascii_:
            assert pc.all(pc.string_is_ascii(p)).as_py() is not False
        vals = p.to_pylist()
        every |= set(vals)
        long_ |= {v for v, keep in zip(vals, ev._long(p, ascii_), strict=True) if keep}
    return every, long_


def test_whitespace_set_is_arrows() -> None:
    """The fast path knows every character Arrow's ``utf8_split_whitespace`` splits on."""
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    pieces = pc.list_value_length(pc.utf8_split_whitespace(pa.array([f"a{chr(c)}b" for c in cps])))
    arrow_ws = {chr(cps[i]) for i in np.flatnonzero(pieces.to_numpy() != 1)}
    assert arrow_ws == set(WHITESPACE)


@pytest.mark.parametrize("ws", list(WHITESPACE))
def test_every_whitespace_character_is_normalized(ws: str) -> None:
    vals = [f"Ab{ws}Cd", f"{ws}Ab", f"Ab{ws}", f"a b{ws}{ws}c", f"É{ws}x", "plain", "Two Words"]
    arr = pa.array(vals)
    every, long_ = _parts_set(arr)
    assert every == _reference_normal(arr)
    assert long_ == {v for v in every if len(v) >= ev.MIN_TOKEN}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), values), max_size=40),
    st.sampled_from(["plain", "large", "dict", "sliced"]),
)
def test_normal_form_is_split_join_lower(vals: list[str | None], kind: str) -> None:
    arr = _array(vals, kind)
    every, long_ = _parts_set(arr)
    expected = _reference_normal(arr)
    assert every == expected
    assert long_ == {v for v in expected if len(v) >= ev.MIN_TOKEN}


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=40), st.booleans())
def test_words_are_the_regex_split(vals: list[str], sliced: bool) -> None:
    arr = pa.array(["zz", *vals], pa.string())
    arr = arr.slice(1) if sliced else arr.slice(1).take(pa.array(range(len(vals)), pa.int64()))
    got = ev._words(arr).to_pylist()
    pieces = pc.list_flatten(pc.split_pattern_regex(arr, r"[\W_]+")).to_pylist()
    assert set(got) == {p for p in pieces if len(p) >= ev.MIN_TOKEN}
    assert all(re.fullmatch(r"[0-9A-Za-z]+", w) for w in got)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_common_is_the_exact_intersection(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_in = data.draw(st.integers(0, 4))
    n_out = data.draw(st.integers(0, 4))
    pool = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True)

    def column() -> list[np.ndarray]:
        k = data.draw(st.integers(0, 3))
        size = data.draw(st.integers(0, 4000))
        return [
            np.concatenate(
                [
                    pool[rng.integers(0, pool.size, size // 4)],
                    rng.integers(0, 2**64 - 1, size, dtype=np.uint64, endpoint=True),
                ]
            )
            for _ in range(k)
        ]

    inputs = [column() for _ in range(n_in)]
    outputs = [column() for _ in range(n_out)]
    flat = lambda cols: np.concatenate([a for arrs in cols for a in arrs] or [ev._EMPTY])  # noqa: E731
    both = np.intersect1d(flat(inputs), flat(outputs))
    for native in PATHS:
        with _path(native):
            got_in, got_out = ev._common(inputs, outputs)
        for cols, got in ((inputs, got_in), (outputs, got_out)):
            assert len(got) == len(cols)
            for arrs, g in zip(cols, got, strict=True):
                want = np.intersect1d(np.concatenate(arrs or [ev._EMPTY]), both)
                assert np.array_equal(np.sort(g), want)


def _same(policy: Policy, batches: list[tuple[pa.RecordBatch, pa.RecordBatch]]) -> dict[str, Any]:
    """The same evidence as the reference, on the compiled path and on the fallback."""
    seed = 0x5EED_1234_ABCD_0042
    ref = Reference(policy, _seed=seed)
    for inp, out in batches:
        ref.observe_input("t", inp)
        ref.observe_output("t", out)
    want = ref.finish()
    # the digest is no longer Polars' column hash: only the method's wording differs
    assert "Polars" in want["residual_pii"].pop("method")
    results = []
    for native in PATHS:
        with _path(native):
            new = EvidenceCollector(policy, _seed=seed)
            for inp, out in batches:
                new.observe_input("t", inp)
                new.observe_output("t", out)
            got = new.finish()
        assert "keyed 64-bit digests" in got["residual_pii"].pop("method")
        assert got == want
        results.append(got)
    return results[0]


@st.composite
def runs(draw: st.DrawFn) -> list[tuple[pa.RecordBatch, pa.RecordBatch]]:
    n_batches = draw(st.integers(1, 3))
    # (not large_string: the reference fails on it; see test_large_strings_...)
    kinds = {c: draw(st.sampled_from(["plain", "dict", "sliced"])) for c in STRING_COLS}
    seen: list[str] = []
    out_batches = []
    for _ in range(n_batches):
        n = draw(st.integers(0, 12))
        col = st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)
        inp = {c: draw(col) for c in STRING_COLS}
        inp["band"] = draw(st.lists(st.integers(0, 90), min_size=n, max_size=n))
        seen += [v for c in STRING_COLS for v in inp[c] if v]
        out = {c: draw(col) for c in STRING_COLS}
        out["city"] = list(inp["city"])
        out["band"] = [b // 10 * 10 for b in inp["band"]]
        # leaks: a real value (of this or an earlier batch) verbatim, in another case,
        # inside text, between punctuation; or passed through in place
        for c in STRING_COLS:
            for r in range(n):
                how = draw(st.integers(0, 9))
                if how == 0 and seen:
                    out[c][r] = draw(st.sampled_from(seen))
                elif how == 1 and seen:
                    v = draw(st.sampled_from(seen))
                    out[c][r] = f"x {v.upper()} ({v}), y-{v}"
                elif how == 2:
                    out[c][r] = inp[c][r]
        quarantine = draw(st.integers(0, 2)) if n else 0
        out = {k: v[quarantine:] for k, v in out.items()}
        out_batches.append((_batch(inp, kinds), _batch(out, kinds)))
    return out_batches


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_same_evidence_as_the_reference(
    policy: Policy, batches: list[tuple[pa.RecordBatch, pa.RecordBatch]]
) -> None:
    _same(policy, batches)


def _rows(n: int, start: int) -> dict[str, list[Any]]:
    return {
        "sid": [f"SUBJ-{start + i:06d}" for i in range(n)],
        "name": [f"Ada{start + i} Lovelace" for i in range(n)],
        "mail": [f"ada{start + i}@example.org" for i in range(n)],
        "code": [f"C-{start + i:08d}" for i in range(n)],
        "alias": [f"alias-{start + i}" for i in range(n)],
        "notes": [f"visit {i} fine" for i in range(n)],
        "city": ["Lyon", "Paris", "Nantes"] * (n // 3) + ["Lyon"] * (n % 3),
        "band": [(start + i) % 90 for i in range(n)],
    }


def _masked(rows: dict[str, list[Any]], tag: str) -> dict[str, list[Any]]:
    n = len(rows["sid"])
    return {
        "sid": [f"SUBJ-{900000 + i:06d}{tag}" for i in range(n)],
        "name": [f"Pseudo Name{i}{tag}" for i in range(n)],
        "mail": [f"tok{i}{tag}@example.org" for i in range(n)],
        "code": ["**********" + c[-2:] for c in rows["code"]],
        "alias": ["[REDACTED]"] * n,
        "notes": list(rows["notes"]),
        "city": list(rows["city"]),
        "band": [b // 10 * 10 for b in rows["band"]],
    }


def test_a_value_left_in_a_masked_column_is_found_across_batches(policy: Policy) -> None:
    """A real name of batch 1 surviving (in capitals) in batch 3's masked column is a hit."""
    n = 3000  # large enough for the column-wide paths (sampled distinctness, bitmaps)
    batches = []
    for b in range(3):
        rows = _rows(n, b * n)
        out = _masked(rows, str(b))
        if b == 2:
            out["alias"][1234] = "ADA7 LOVELACE"  # batch 0's row 7, in another case
            out["code"][10] = rows["code"][10]  # left unchanged in place
            out["notes"][5] = "seen with Ada2999 Lovelace!"  # batch 0's last name, in text
        batches.append((_batch(rows, {}), _batch(out, {})))
    r = _same(policy, batches)["residual_pii"]
    by = {(f["output_column"], f["input_column"]): f for f in r["findings"]}
    assert by[("t.alias", "t.name")] == {
        "output_column": "t.alias",
        "input_column": "t.name",
        "hits": 1,
        "coincidences": 0,
    }
    assert by[("t.notes", "t.name")]["hits"] == 1
    assert by[("t.code", "t.code")]["hits"] == 1
    assert r["unchanged_in_place"]["t.code"] == {"unchanged": 1, "compared": 3 * n}
    assert r["hits"] == 3 and r["sampled_fraction"] == 1.0


def test_bench_shaped_run_matches_the_reference(policy: Policy) -> None:
    """Mostly distinct columns, repeated ones, non-ASCII names, tokens equal to real ids."""
    rng = np.random.default_rng(7)
    first = ["Ada", "Zoë", "Jürgen", "Ødegaard", "Chloé", "Li", "Ngozi"]
    batches = []
    for _ in range(2):
        n = 5000
        ids = rng.integers(0, 20000, n)
        rows = {
            "sid": [f"SUBJ-{i:06d}" for i in ids],
            "name": [f"{first[i % 7]} {'  ' if i % 97 == 0 else ' '}Surname{i}" for i in ids],
            "mail": [f"P{i}@Example.org" for i in ids],
            "code": [f"CAP-{i:010d}" for i in rng.integers(0, 10**10, n)],
            "alias": [f"dev-{i % 300:04d}" for i in ids],
            "notes": [f"note {i % 50}: ok, (ref SUBJ-{i:06d})" for i in ids],
            "city": [["Lyon", "Paris", "São Paulo", "New  York"][i % 4] for i in ids],
            "band": [int(i % 90) for i in ids],
        }
        toks = rng.integers(0, 20000, n)  # tokens in the ids' value space: coincidences
        out = {
            "sid": [f"SUBJ-{i:06d}" for i in toks],
            "name": [f"{first[(i + 3) % 7]} Other{i}" for i in toks],
            "mail": [f"t{i}@example.org" for i in toks],
            "code": [f"CAP-******{c[-4:]}" for c in rows["code"]],
            "alias": ["x"] * n,
            "notes": list(rows["notes"]),
            "city": list(rows["city"]),
            "band": [x // 10 * 10 for x in rows["band"]],
        }
        batches.append((_batch(rows, {"city": "dict"}), _batch(out, {"city": "dict"})))
    r = _same(policy, batches)["residual_pii"]
    assert r["coincidences"] > 0 and r["hits"] > 0  # the notes quote real ids


def test_sampling_bounds_memory_and_still_finds_leaks(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 2000
    batches = []
    for b in range(4):
        rows = _rows(n, b * n)
        out = _masked(rows, str(b))
        out["alias"] = list(rows["name"])  # every real name leaks
        batches.append((_batch(rows, {}), _batch(out, {})))
    full = EvidenceCollector(policy)
    for inp, out in batches:
        full.observe_input("t", inp)
        full.observe_output("t", out)
    exact = full.finish()["residual_pii"]
    assert exact["sampled_fraction"] == 1.0
    leaked = {(f["output_column"], f["input_column"]): f["hits"] for f in exact["findings"]}
    assert leaked[("t.alias", "t.name")] == 4 * n

    monkeypatch.setattr(ev, "SCAN_BUDGET", 4000)
    c = EvidenceCollector(policy)
    for inp, out in batches:
        c.observe_input("t", inp)
        c.observe_output("t", out)
        held = sum(a.size for d in (c._inputs, c._outputs) for v in d.values() for a in v)
        assert held == c._held <= c._limit <= 1.5 * ev.SCAN_BUDGET + 8 * n
    r = c.finish()["residual_pii"]
    assert 0 < r["sampled_fraction"] < 1
    sampled = {(f["output_column"], f["input_column"]): f["hits"] for f in r["findings"]}
    # a consistent sample: about the sampled fraction of the leaks, never more
    assert 0 < sampled[("t.alias", "t.name")] <= 4 * n
    assert sampled[("t.alias", "t.name")] == pytest.approx(4 * n * r["sampled_fraction"], rel=0.5)


def test_large_strings_give_the_same_evidence(policy: Policy) -> None:
    """large_string columns (which the reference could not split and join) are scanned alike."""
    rows = _rows(50, 0)
    rows["notes"][3] = "called  Ada4\tLovelace, (ada4@example.org)"
    out = _masked(rows, "x")
    out["notes"] = list(rows["notes"])
    results = []
    for kind in ("plain", "large"):
        kinds = dict.fromkeys(STRING_COLS, kind)
        c = EvidenceCollector(policy, _seed=99)
        c.observe_input("t", _batch(rows, kinds))
        c.observe_output("t", _batch(out, kinds))
        results.append(c.finish())
    assert results[0] == results[1]
    assert results[0]["residual_pii"]["hits"] == 2


def test_k_anonymity_of_many_groups_matches_the_reference(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group counts are merged in Arrow (here every few batches); nulls and "(null)" agree."""
    monkeypatch.setattr(ev, "_MERGE_ROWS", 50)
    batches = []
    for b in range(5):
        rows = _rows(40, b * 40)
        rows["city"] = [
            None if i % 7 == 0 else "(null)" if i % 11 == 0 else f"c{(b * 40 + i) % 97}"
            for i in range(40)
        ]
        out = _masked(rows, str(b))
        out["band"] = [None if i % 5 == 0 else x for i, x in enumerate(out["band"])]
        batches.append((_batch(rows, {}), _batch(out, {"city": "dict"})))
    k = _same(policy, batches)["k_anonymity"]["t"]
    assert k["columns"] == ["city", "band"] and k["rows"] == 200 and k["groups"] > 100


# -- the compiled helper (_evidence.c) against the NumPy/Arrow path ------------------------

#: plain ASCII values (most of them take the compiled path) next to the hard ones
plain = st.text(alphabet="aAbBzZ019 -_@.,;:!?()[]'\"<>", max_size=24)
mixed = st.one_of(plain, values)


@needs_kernels
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(0, 2**64 - 1))
def test_digest_is_the_kernels(vals: list[bytes], seed: int) -> None:
    """The NumPy digest and ``ev_hash`` agree bit for bit, on any bytes and offsets."""
    arr = pa.array([b"pad", *vals], pa.binary()).slice(1)
    off, full = ev._offsets_data(arr)
    k0, k1 = ev._key(seed)
    got = np.empty(len(vals), dtype=np.uint64)
    assert KERNELS is not None
    KERNELS.ev_hash(off, full, ev._key_bytes(k0, k1), got)
    assert np.array_equal(got, ev._digest(off, full, k0, k1))


@needs_kernels
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.none(), mixed), max_size=40),
    st.sampled_from(["plain", "large", "dict", "sliced"]),
    st.booleans(),
)
def test_column_digests_are_the_same_on_both_paths(
    vals: list[str | None], kind: str, candidates: bool
) -> None:
    """Same digests, duplicates included (they count against the budget), either path."""
    arr = _array(vals, kind)
    got = {}
    for native in (True, False):
        with _path(native):
            c = EvidenceCollector(None, _seed=1234)
            got[native] = np.sort(c._digests(ev._values(arr)[0], candidates))
    assert np.array_equal(got[True], got[False])


@needs_kernels
def test_sampled_scan_is_the_same_on_both_paths(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the budget the sample is a digest threshold: the same digests, the same sample."""
    monkeypatch.setattr(ev, "SCAN_BUDGET", 3000)
    batches = []
    for b in range(3):
        rows = _rows(1500, b * 1500)
        rows["name"][::7] = [f"Zoë {i}  Ödegaard" for i in range(len(rows["name"][::7]))]
        out = _masked(rows, str(b))
        out["alias"] = list(rows["name"])
        out["notes"] = [
            f"{n} met (at) {m}" for n, m in zip(rows["name"], rows["mail"], strict=True)
        ]
        batches.append((_batch(rows, {}), _batch(out, {"city": "dict"})))
    results = []
    for native in (True, False):
        with _path(native):
            c = EvidenceCollector(policy, _seed=77)
            for inp, out in batches:
                c.observe_input("t", inp)
                c.observe_output("t", out)
            results.append(c.finish())
    assert results[0] == results[1]
    assert 0 < results[0]["residual_pii"]["sampled_fraction"] < 1
    assert results[0]["residual_pii"]["hits"] > 0


def _buffers(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return np.array([0, 3, 6, 9][: n + 1], dtype=np.int64), np.frombuffer(b"abcDEFghi", np.uint8)


@needs_kernels
@pytest.mark.parametrize(
    "offsets",
    [[0, 3, 2], [0, 3, 10], [-1, 3, 6], [0, 3, 6, 2**40], []],
    ids=["decreasing", "past-end", "negative", "huge", "none"],
)
def test_kernels_refuse_bad_offsets(offsets: list[int]) -> None:
    assert KERNELS is not None
    off = np.array(offsets, dtype=np.int64)
    data = np.frombuffer(b"abcDEFghi", np.uint8)
    n = max(off.size - 1, 0)
    with pytest.raises(ValueError, match="offsets"):
        KERNELS.ev_hash(off, data, bytes(16), np.empty(n, np.uint64))
    status, whole = np.empty(n, np.uint8), np.empty(n, np.uint64)
    with pytest.raises(ValueError, match="offsets"):
        KERNELS.ev_scan(off, data, bytes(16), True, status, whole, np.empty(64, np.uint64))
    with pytest.raises(ValueError, match="offsets"):
        KERNELS.ev_distinct(off, data, bytes(16), np.empty(n, np.int64))
    with pytest.raises(ValueError, match="offsets"):  # not int64
        KERNELS.ev_hash(off.astype(np.int32)[:3], data, bytes(16), np.empty(n, np.uint64))


@needs_kernels
def test_kernels_refuse_bad_sizes() -> None:
    assert KERNELS is not None
    off, data = _buffers()
    with pytest.raises(ValueError, match="key"):
        KERNELS.ev_hash(off, data, bytes(8), np.empty(3, np.uint64))
    with pytest.raises(ValueError, match="out"):
        KERNELS.ev_hash(off, data, bytes(16), np.empty(2, np.uint64))
    with pytest.raises(ValueError, match="first"):
        KERNELS.ev_distinct(off, data, bytes(16), np.empty(2, np.int64))
    with pytest.raises(ValueError, match="status"):
        KERNELS.ev_scan(
            off, data, bytes(16), False, np.empty(2, np.uint8), np.empty(3, np.uint64), bytearray()
        )
    text = np.frombuffer(b"ab cd ef gh ij kl", np.uint8)
    with pytest.raises(ValueError, match="cand"):  # room for fewer candidates than there are
        KERNELS.ev_scan(
            np.array([0, text.size], np.int64), text, bytes(16), True,
            np.empty(1, np.uint8), np.empty(1, np.uint64), np.empty(2, np.uint64),
        )  # fmt: skip
    keys = np.arange(5, dtype=np.uint64)
    for table, shift in ((np.zeros(12, np.uint8), 0), (np.zeros(4, np.uint8), 0),
                         (np.zeros(16, np.uint8), 64), (np.zeros(16, np.uint8), -1)):  # fmt: skip
        with pytest.raises(ValueError, match="table"):
            KERNELS.ev_bits(keys, shift, table)
        with pytest.raises(ValueError, match="table"):
            KERNELS.ev_filter(table, shift, keys, np.empty(5, np.uint64))
    with pytest.raises(ValueError, match="probes"):  # no room for every probe
        KERNELS.ev_filter(np.zeros(16, np.uint8), 0, keys, np.empty(4, np.uint64))
    with pytest.raises(ValueError, match="keys"):
        KERNELS.ev_bits(np.zeros(7, np.uint8), 0, np.zeros(16, np.uint8))


@needs_kernels
def test_scan_kernel_status_and_counts() -> None:
    """Plain ASCII values are hashed in C; the others are only classified."""
    assert KERNELS is not None
    vals = ["Ada Lovelace", "ab", "Zoë", "two  spaces", " edge", "tab\there", "x\u00a0y", ""]
    arr = pa.array(vals)
    off, full = ev._offsets_data(arr)
    status, whole = np.empty(len(vals), np.uint8), np.empty(len(vals), np.uint64)
    cand = np.empty(64, np.uint64)
    n_whole, n_cand, spaced, n_slow = KERNELS.ev_scan(
        off, full, bytes(16), True, status, whole, cand
    )
    assert status.tolist() == [0, 0, 1, 2, 2, 2, 2, 0]
    assert (n_whole, spaced, n_slow) == (1, 1, 5)  # "ab" and "" are too short
    # words ada, lovelace; tokens ada, lovelace; the 2-gram "ada lovelace"
    assert n_cand == 5
    k = bytes(16)
    one = np.empty(1, np.uint64)
    lowered = pa.array(["ada lovelace"])
    KERNELS.ev_hash(*ev._offsets_data(lowered), k, one)
    assert whole[0] == one[0] and one[0] in cand[:n_cand]


@needs_kernels
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "a", "A", "ab", "é", "abcdefghijklmnopq", "x y"]) | mixed))
def test_distinct_is_arrows_unique(vals: list[str]) -> None:
    arr = pa.array(["pad", *vals], pa.string()).slice(1)
    with _path(True):
        got = ev._distinct(arr)
        long_ = ev._distinct(arr, ev.MIN_TOKEN)
    assert got.to_pylist() == pc.unique(arr).to_pylist()
    # with a minimum length: the same, less the values of fewer bytes
    assert long_.to_pylist() == [v for v in got.to_pylist() if len(v.encode()) >= ev.MIN_TOKEN]


@needs_kernels
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "a", "É", "ab", "é!", "a b", "x y", "(a)", "İ"]) | mixed))
def test_values_too_short_have_no_digest(vals: list[str]) -> None:
    """Leaving out the values shorter than MIN_TOKEN bytes leaves the digests as they are,
    duplicates included (so the held count and the budget do not move either)."""
    arr = pa.array(vals, pa.string())
    with _path(True):
        c = EvidenceCollector(None, _seed=99)
        for candidates in (False, True):
            every = c._digests(pc.unique(arr), candidates)
            long_ = c._digests(ev._distinct(arr, ev.MIN_TOKEN), candidates)
            assert np.array_equal(np.sort(long_), np.sort(every))


@needs_kernels
def test_filter_keeps_the_probes_whose_bit_is_set() -> None:
    assert KERNELS is not None
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64 - 1, 500, dtype=np.uint64, endpoint=True)
    probes = np.concatenate([keys[::3], rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64)])
    for shift in (0, 20, 52):
        table = np.zeros(1 << 9, np.uint8)  # 4096 slots
        KERNELS.ev_bits(keys, shift, table)
        slots = (probes >> np.uint64(shift)) & np.uint64(4095)
        bit = (table[slots >> np.uint64(3)] >> (slots & np.uint64(7)).astype(np.uint8)) & 1
        want = probes[bit == 1]
        room = np.full(probes.size + 3, 7, np.uint64)
        k = KERNELS.ev_filter(table, shift, probes, room)
        assert np.array_equal(room[:k], want)  # in order
        assert k < probes.size and set(keys[::3].tolist()) <= set(room[:k].tolist())


def test_a_category_column_is_hashed_once_per_set(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept column of a few values: its digests are reused while its set of values stays
    the same (in any order and count), and recomputed when the set changes (same size)."""
    cities = ["Lyon", "São Paulo", "Zoë Ödegaard", "Ada7 Lovelace"]  # a real name leaks
    sets = [cities, cities[::-1], [*cities[:3], "Nantes"]]
    batches = []
    for b, values in enumerate(sets):
        rows = _rows(2000, b * 2000)
        out = _masked(rows, str(b))
        out["city"] = [values[(i * 7 + b) % 4] for i in range(2000)]
        batches.append((_batch(rows, {}), _batch(out, {})))
    hashed: list[list[str]] = []
    digests = EvidenceCollector._digests

    def spy(self: EvidenceCollector, values: pa.Array, candidates: bool) -> np.ndarray:
        if "Lyon" in values.to_pylist():
            hashed.append(sorted(values.to_pylist()))
        return digests(self, values, candidates)

    monkeypatch.setattr(EvidenceCollector, "_digests", spy)
    r = _same(policy, batches)["residual_pii"]
    assert hashed == [sorted(sets[0]), sorted(sets[2])] * len(PATHS)  # each path hashes 2
    by = {(f["output_column"], f["input_column"]): f["hits"] for f in r["findings"]}
    assert by[("t.city", "t.name")] == 1


def test_a_kept_integer_key_is_counted_as_hits() -> None:
    """The issue's export: volunteers.volunteer_id tokenized, sessions.volunteer_id kept raw.

    Every raw id that survives in the kept foreign key is a hit; an unrelated integer
    column kept beside it is not, even where its values fall inside the range of ids (it
    is not named like an identifier), and the tokens themselves are not probes.
    """
    policy = policy_from_dict(
        {
            "version": 1,
            "dataset": "two",
            "tables": {
                "volunteers": {"columns": {"volunteer_id": {"op": "tokenize", "domain": "v"}}},
                "sessions": {"columns": {"volunteer_id": {"op": "keep"}, "visits": {"op": "keep"}}},
            },
        }
    )
    ids = pa.array(range(1_000_000, 1_000_200), pa.int64())
    tokens = pa.array(range(5_000_000, 5_000_200), pa.int64())  # what tokenize gave
    c = EvidenceCollector(policy)
    c.observe_input("volunteers", pa.record_batch({"volunteer_id": ids}))
    c.observe_output("volunteers", pa.record_batch({"volunteer_id": tokens}))
    sessions = pa.record_batch(
        {
            "volunteer_id": ids.take(pa.array([i % 150 for i in range(600)])),
            "visits": pa.array([i % 7 for i in range(600)], pa.int64()),
            "height_mm": ids.take(pa.array([(i * 7) % 200 for i in range(600)])),
        }
    )
    c.observe_input("sessions", sessions)
    c.observe_output("sessions", sessions)
    r = c.finish()["residual_pii"]
    assert r["hits"] == 150
    assert r["findings"] == [
        {
            "output_column": "sessions.volunteer_id",
            "input_column": "volunteers.volunteer_id",
            "hits": 150,
            "coincidences": 0,
        }
    ]
    # masked as the draft now does (same domain on both sides): nothing left
    c = EvidenceCollector(
        policy_from_dict(
            {
                "version": 1,
                "dataset": "two",
                "tables": {
                    t: {"columns": {"volunteer_id": {"op": "tokenize", "domain": "v"}}}
                    for t in ("volunteers", "sessions")
                },
            }
        )
    )
    c.observe_input("volunteers", pa.record_batch({"volunteer_id": ids}))
    c.observe_output("volunteers", pa.record_batch({"volunteer_id": tokens}))
    c.observe_input("sessions", sessions.select(["volunteer_id"]))
    assert c._key_like("volunteer_id") and c._key_like("SubjectID") and c._key_like("ref_no")
    assert not c._key_like("valid") and not c._key_like("paid") and not c._key_like("height")
    c.observe_output(
        "sessions",
        pa.record_batch({"volunteer_id": tokens.take(pa.array([i % 150 for i in range(600)]))}),
    )
    assert c.finish()["residual_pii"]["hits"] == 0


# -- accented Latin letters (U+00C0-U+00FF) hashed in C when there are no candidates ----------

#: U+0080-U+00FF, each at every byte lane of a word and across a word's end, with ASCII
#: capitals, spaces and punctuation around it; short ones decide MIN_TOKEN in characters
_LATIN1_VALUES = [
    f"{'Ab' * k}{'A' * (k % 2)}{chr(cp)}{tail}"
    for cp in range(0x80, 0x100)
    for k in range(10)
    for tail in ("", "x", "Zé Q", "-ÉÀ.")
] + [chr(cp) * r for cp in range(0x80, 0x100) for r in (1, 2, 3, 5)]


def _both_paths(arr: pa.Array, candidates: bool, seed: int = 1234) -> dict[bool, np.ndarray]:
    got = {}
    for native in (True, False):
        with _path(native):
            c = EvidenceCollector(None, _seed=seed)
            got[native] = c._digests(arr, candidates)
    return got


def test_utf8_lower_of_latin1_is_what_the_kernel_assumes() -> None:
    """Arrow's lower case of U+0080-U+00FF: U+00C0-U+00DE but U+00D7 plus 0x20, the rest
    unchanged, the same bytes' count (_evidence.c's lower8_latin1)."""
    for cp in range(0x80, 0x100):
        want = cp + 0x20 if 0xC0 <= cp <= 0xDE and cp != 0xD7 else cp
        got = pc.utf8_lower(pa.array([f"A{chr(cp)}Z"])).to_pylist()[0]
        assert got == f"a{chr(want)}z", hex(cp)


@needs_kernels
@pytest.mark.parametrize("candidates", [False, True])
def test_every_latin1_code_point_gives_the_same_digests(candidates: bool) -> None:
    """Every code point U+0080-U+00FF inside otherwise-ASCII values: the same digests with
    the compiled helper as without, duplicates included; without candidates, the values
    of U+00C0-U+00FF letters (and no whitespace to split) are all hashed in C."""
    for kind in ("plain", "large", "sliced"):
        arr = _array(_LATIN1_VALUES, kind)
        got = _both_paths(arr, candidates)
        assert np.array_equal(np.sort(got[True]), np.sort(got[False]))
    assert KERNELS is not None
    latin = pa.array([v for v in _LATIN1_VALUES if all(ord(ch) < 0x80 or ch >= "\xc0" for ch in v)])
    off, full = ev._offsets_data(latin)
    n = len(latin)
    status, whole = np.empty(n, np.uint8), np.empty(n, np.uint64)
    cap = 2 * int(off[-1]) + 2 * n if candidates else 0
    res = KERNELS.ev_scan(off, full, bytes(16), candidates, status, whole, np.empty(cap, np.uint64))
    n_whole, n_slow = res[0], res[3]
    if candidates:  # the candidates of non-ASCII values stay on the Arrow path
        assert n_slow == int(pc.sum(pc.invert(pc.string_is_ascii(latin))).as_py())
    else:
        assert n_slow == 0 and not status.any()
        assert n_whole == int(ev._long(latin, False).sum())


@needs_kernels
def test_latin1_digests_are_utf8_lower_hashed() -> None:
    """The C digests of accented values are ``ev_hash`` of Arrow's ``utf8_lower``, in row
    order, for the values at least ``MIN_TOKEN`` characters (not bytes) long."""
    assert KERNELS is not None
    vals = ["Serge Labonté", "MÜLLER", "Zoë", "Éa", "ÀÉ", "ÿÿÿ", "×÷ß", "Ab Çd-Ñ.", "Øx"]
    arr = pa.array(vals)
    off, full = ev._offsets_data(arr)
    status, whole = np.empty(len(vals), np.uint8), np.empty(len(vals), np.uint64)
    key = ev._key_bytes(*ev._key(99))
    n_whole, _, _, n_slow = KERNELS.ev_scan(
        off, full, key, False, status, whole, np.empty(0, np.uint64)
    )
    lower = pc.utf8_lower(arr)
    want = np.empty(len(vals), np.uint64)
    KERNELS.ev_hash(*ev._offsets_data(lower), key, want)
    keep = np.array([len(v) >= ev.MIN_TOKEN for v in vals])
    assert n_slow == 0
    assert np.array_equal(whole[:n_whole], want[keep])
    assert keep.tolist() == [True, True, True, False, False, True, True, True, False]


#: ASCII letters, digits, spaces and punctuation; Latin-1 letters; NBSP (whitespace),
#: other Latin-1 symbols, U+0130 (longer lower case), Latin Extended-A, Cyrillic, CJK, emoji
_MIXED_ALPHABET = (
    string.ascii_letters
    + string.digits
    + "   "
    + string.punctuation
    + "".join(map(chr, range(0xC0, 0x100)))
    + "\u00a0\u0085\t\u00a9\u00ab\u00b5\u0130\u0131\u0142\u0141\u015f\u1ec5"
    + "ДжЖя中文😀"
)


@needs_kernels
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(alphabet=_MIXED_ALPHABET, max_size=24), max_size=40),
    st.sampled_from(["plain", "large", "sliced"]),
    st.booleans(),
)
def test_latin1_and_other_scripts_give_the_same_digests(
    vals: list[str], kind: str, candidates: bool
) -> None:
    """Sorted digests of ``_digests`` are the same on both paths, with and without
    candidates, on values mixing ASCII, accented Latin letters and other characters."""
    got = _both_paths(_array(vals, kind), candidates, seed=len(vals))
    assert np.array_equal(np.sort(got[True]), np.sort(got[False]))


@needs_kernels
def test_generated_names_give_the_same_digests() -> None:
    """10^5 generated names (about a fifth with non-ASCII letters): the same digests either
    way, as a column's digests (made distinct or not) and as ``_digests`` of the column."""
    from biomask.demo import generate_structured

    names = generate_structured(100_000).column("full_name").combine_chunks()
    assert not pc.all(pc.string_is_ascii(names)).as_py()
    for candidates in (False, True):
        got = _both_paths(names, candidates)
        assert got[True].size == got[False].size > 0
        assert np.array_equal(np.sort(got[True]), np.sort(got[False]))
    cols = {}
    for native in (True, False):
        with _path(native):
            c = EvidenceCollector(None, _seed=5)
            cols[native] = np.sort(c._column_digests("in:t.full_name", names, False))
    assert np.array_equal(cols[True], cols[False])


def test_an_accented_name_left_in_a_masked_column_is_found(policy: Policy) -> None:
    """Accented real names surviving a masked column (in another case, or inside text) are
    hits on both paths, as for the reference."""
    n = 3000
    batches = []
    for b in range(2):
        rows = _rows(n, b * n)
        rows["name"] = [f"Serge{b * n + i} Labonté" for i in range(n)]
        rows["name"][42] = "Müller"
        out = _masked(rows, str(b))
        if b == 1:
            out["alias"][17] = "SERGE5 LABONTÉ"  # batch 0's row 5, in capitals
            out["alias"][18] = "MÜLLER"
            out["notes"][3] = "seen with Serge2999 Labonté!"  # batch 0's last name
        batches.append((_batch(rows, {}), _batch(out, {})))
    r = _same(policy, batches)["residual_pii"]
    by = {(f["output_column"], f["input_column"]): f for f in r["findings"]}
    assert by[("t.alias", "t.name")]["hits"] == 2
    assert by[("t.notes", "t.name")]["hits"] == 1
