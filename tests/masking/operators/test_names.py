"""The pseudonym operator's name mapping: pinned tokens, consistency and its oracle.

Tokens must not change between versions (users join masked data across runs), so the
vectorized :meth:`NameMapper.full_names_array` is checked against a per-value Python
oracle of the rules it implements and against outputs pinned with a fixed key.
"""

from __future__ import annotations

import random
import re
import threading
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomask.keys import Keyring
from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import DeterministicPrf
from biomask.masking.operators import names
from biomask.masking.operators.names import (
    FAMILY,
    GIVEN,
    TITLES,
    NameMapper,
    Pseudonym,
    normalize_name,
)
from biomask.masking.registry import Binding, OperatorContext
from biomask.policies import parse_policy
from biomask.policies.models import PseudonymOp

INITIAL = "i"
FIXED = DeterministicPrf(KeyHandle(bytes(range(32)), "k0", "pseudonym/person"))
PRF = DeterministicPrf(Keyring.ephemeral().derive("pseudonym", "person"))
SHARED = NameMapper(PRF)  # warm across examples, as in a long run

# (input, output) with the key above, as biomask 0.1 (before the vectorized rewrite) made them
PINNED = [
    ("Isabel Petrosyan", "Maura Zheng"),
    ("PETROSYAN, Isabel", "ZHENG, Maura"),
    ("Ms Petrosyan", "Ms Zheng"),
    ("I. Petrosyan", "T. Zheng"),
    ("isabel petrosyan", "maura zheng"),
    ("J. R. R. Tolkien", "A. R. R. Schmitt"),
    ("Dr. Jean-Luc O'Brien", "Dr. Hemani-Fergus Basaran"),
    ("Mustapha Müller", "Maurizio Mistry"),
    ("José Álvarez-Núñez", "Salah Reis-Ulikhanyan"),
    ("Σοφία Παπαδοπούλου", "Alfonso Zach"),
    ("王 小明", "H Sorgatz"),
    ("Mr/Ms  Kowal ", "Mr/Ms  Pons "),
    ("", ""),
    ("  ", "  "),
    ("Dr", "[REDACTED]"),
    ("-", "[REDACTED]"),
    ("Anne-Marie d’Arcy, Jr.", "Ozdemir-Gimishyan Juarez, Ozinal."),
    (None, None),
    ("ŁUKASZ Øberg", "OLUWAFEMI Costa"),
    ("Herr Straße", "Herr Santos"),
]


# -- the oracle: the rules, one value at a time, in plain Python ------------------------

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*\.?")
_FOLD = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"})


def slow_normalize(part: str) -> str:
    decomposed = unicodedata.normalize("NFKD", part.casefold().translate(_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip(".")


def slow_parts(prf: DeterministicPrf, parts: list[tuple[str, str]]) -> list[str]:
    """map_parts from its definition: one PRF value per (role, normalized part)."""
    given_pool, family_pool = names._lists()
    out = []
    for role, text in parts:
        key = GIVEN if role == INITIAL else role
        pool = family_pool if key == FAMILY else given_pool
        k = int(prf.integers([f"{key}:{slow_normalize(text)}".encode()], 1 << 30)[0])
        name = pool[k % len(pool)]
        if role == INITIAL:
            name = name[0]
        if text.isupper() and len(text) > 1:
            name = name.upper()
        elif text.islower():
            name = name.lower()
        out.append(name)
    return out


def oracle(prf: DeterministicPrf, value: str | None) -> str | None:
    """A full name the way the pseudonym operator defines it, per value."""
    if value is None:
        return None
    pieces = value.split(" ")
    words = [_WORD.findall(p) for p in pieces]
    kinds = []
    for ws in words:
        if not ws:
            kinds.append("keep")
        elif all(slow_normalize(w) in TITLES for w in ws):
            kinds.append("title")
        elif len(ws) == 1 and len(ws[0].rstrip(".")) == 1:
            kinds.append(INITIAL)
        else:
            kinds.append("word")
    part = [k in (INITIAL, "word") for k in kinds]
    commas = [i for i, p in enumerate(pieces) if part[i] and "," in p]
    nparts = sum(part)
    last = max((i for i in range(len(pieces)) if part[i]), default=-1)
    out = []
    for i, (p, kind) in enumerate(zip(pieces, kinds, strict=True)):
        if kind in ("keep", "title"):
            out.append(p)
            continue
        if kind == INITIAL:
            role = INITIAL
        elif commas:
            role = FAMILY if i <= commas[0] else GIVEN
        elif nparts > 1:
            role = FAMILY if i == last else GIVEN
        else:
            role = FAMILY if "title" in kinds else GIVEN
        new = slow_parts(prf, [(role, m.group().rstrip(".")) for m in _WORD.finditer(p)])
        ms = list(_WORD.finditer(p))
        for m, n in zip(reversed(ms), reversed(new), strict=True):
            dot = "." if m.group().endswith(".") else ""
            p = p[: m.start()] + n + dot + p[m.end() :]
        out.append(p)
    blank = pc.utf8_trim_whitespace(pa.scalar(value)).as_py() == ""
    return "[REDACTED]" if nparts == 0 and not blank else " ".join(out)


# -- strategies: the awkward shapes names come in ---------------------------------------

PIECES = [
    "Isabel", "Petrosyan", "PETROSYAN,", "Petrosyan,", "Ms", "Dr.", "dr", "MR/MS", "Herr",
    "J.", "R.", "R", "j", "J.R.R.", "Jean-Luc", "O'Brien", "D’Arcy", "Müller", "MÜLLER",
    "José", "Łukasz", "Øystein", "Æsa", "Þór", "straße", "İlker", "ǅemal", "Σοφία", "ΣΟΦΊΑ",
    "Иван", "李", "王小明", "محمد", "-", ",", "&", "3", "x2", "_", "", "Ms.", "Prof", "a,b",
    "von", "Jr.", "III", "ﬁona", "Ⅻ", "²", "..", "\t", "\u00a0", "e\u0301", "Mc\u0301Kay",
]  # fmt: skip
piece = st.one_of(st.sampled_from(PIECES), st.text(max_size=6))
name = st.one_of(st.lists(piece, max_size=5).map(" ".join), st.text(max_size=16))
column = st.lists(st.one_of(st.none(), name), max_size=25)


def run(mapper: NameMapper, values: list[str | None]) -> list[str | None]:
    out: list[str | None] = mapper.full_names_array(pa.array(values, pa.string())).to_pylist()
    return out


# -- tests ------------------------------------------------------------------------------


def test_pinned_tokens() -> None:
    values = [v for v, _ in PINNED]
    want = [w for _, w in PINNED]
    assert run(NameMapper(FIXED), values) == want
    assert [oracle(FIXED, v) for v in values] == want
    warm = NameMapper(FIXED)
    run(warm, values[::-1])
    assert run(warm, values) == want


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(column)
def test_matches_the_per_value_oracle(values: list[str | None]) -> None:
    want = [oracle(PRF, v) for v in values]
    assert run(SHARED, values) == want
    assert run(NameMapper(PRF), values) == want


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(column, column, st.randoms(use_true_random=False))
def test_same_value_same_token_whatever_the_batch(
    a: list[str | None], b: list[str | None], rnd: random.Random
) -> None:
    alone = dict(zip(a, run(NameMapper(PRF), a), strict=True))
    mixed = a + b
    rnd.shuffle(mixed)
    # another mapper, warmed on another batch first
    other = NameMapper(PRF)
    run(other, b)
    got = dict(zip(mixed, run(other, mixed), strict=True))
    assert {v: got[v] for v in a} == alone
    # a slice, a chunked column and a large_string column agree too
    arr = pa.array([None, *mixed], pa.string()).slice(1)
    assert SHARED.full_names_array(arr).to_pylist() == [got[v] for v in mixed]
    half = len(mixed) // 2
    chunked = pa.chunked_array(
        [pa.array(mixed[:half], pa.string()), pa.array(mixed[half:], pa.string())]
    )
    assert SHARED.full_names_array(chunked).to_pylist() == [got[v] for v in mixed]
    large = SHARED.full_names_array(pa.array(mixed, pa.large_string()))
    assert large.type == pa.large_string() and large.to_pylist() == [got[v] for v in mixed]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_normalize_name_fast_path_is_exact(text: str) -> None:
    assert normalize_name(text) == slow_normalize(text)


def test_normalize_name_ascii() -> None:
    every = "".join(map(chr, range(128)))
    assert normalize_name(every) == slow_normalize(every)
    for c in every:
        assert normalize_name(c + "x") == slow_normalize(c + "x")


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.tuples(st.sampled_from([GIVEN, FAMILY, INITIAL]), piece.filter(bool)), max_size=20)
)
def test_map_parts_from_its_definition(parts: list[tuple[str, str]]) -> None:
    assert SHARED.map_parts(parts) == slow_parts(PRF, parts)


def test_data_under_nulls_is_not_read() -> None:
    base = pa.array(["Isabel Petrosyan", "Jan Kowal", "Ms Petrosyan", "Dr", "x"])
    valid = pa.array([True, False, True, False, True])
    values = pa.Array.from_buffers(
        pa.string(), 5, [valid.buffers()[1], *base.buffers()[1:]], null_count=2
    )
    want = [oracle(PRF, v) for v in values.to_pylist()]
    assert want[1] is None and want[3] is None
    assert SHARED.full_names_array(values).to_pylist() == want
    assert SHARED.full_names_array(values.slice(1)).to_pylist() == want[1:]


def test_bounded_memory_gives_the_same_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from biomask.demo import iter_structured_batches

    batches = [b.column("full_name") for b in iter_structured_batches(3000, batch_size=1000)]
    want = [NameMapper(PRF).full_names_array(b) for b in batches]
    monkeypatch.setattr(names, "_MAX_VOCAB", 1500)
    monkeypatch.setattr(names, "_MAX_CHOSEN", 300)
    small = NameMapper(PRF)
    for b, w in zip(batches * 2, want * 2, strict=True):
        assert small.full_names_array(b).equals(w)
        assert len(small._vocab.pieces) <= max(1500, 2 * len(b))
    assert all(len(c) <= 300 for c in small._chosen.values())


def test_threads_share_a_mapper() -> None:
    from biomask.demo import iter_structured_batches

    batches = [b.column("full_name") for b in iter_structured_batches(8000, batch_size=1000)]
    want = [NameMapper(PRF).full_names_array(b) for b in batches]
    shared = NameMapper(PRF)
    got: dict[int, pa.Array] = {}

    def work(i: int) -> None:
        for j in range(i, i + len(batches)):
            k = j % len(batches)
            out = shared.full_names_array(batches[k])
            assert out.equals(want[k])
            got[k] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(len(batches)))


def test_operator_on_a_demo_column_matches_the_oracle() -> None:
    from biomask.demo import iter_structured_batches

    batch = next(iter_structured_batches(2000, batch_size=2000))
    values = batch.column("full_name")
    ring = Keyring.ephemeral()
    policy = parse_policy(
        "version: 1\ndataset: t\ncolumns:\n  full_name: {op: pseudonym, domain: person}\n"
    )
    op = Pseudonym(
        PseudonymOp.model_validate({"op": "pseudonym", "domain": "person"}),
        Binding(policy, ring, "t", "full_name"),
    )
    ctx = OperatorContext("t", "full_name", batch, {}, np.zeros(len(values), bool))
    out = op(values, ctx)
    assert out.type == values.type and not ctx.bad.any()
    prf = DeterministicPrf(ring.derive("pseudonym", "person"))
    assert out.to_pylist() == [oracle(prf, v) for v in values.to_pylist()]
