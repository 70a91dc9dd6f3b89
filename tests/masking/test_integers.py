"""Integer tokens: same type and sign, a permutation (no merged keys), consistent across
integer widths, batches and tables, reversible with FF1, bound to date shifts."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask.keys import Keyring
from biomask.masking import Masker, Unmasker
from biomask.masking.ff1 import FF1
from biomask.masking.integers import permute_integers
from biomask.policies import parse_policy

RING = Keyring.ephemeral()
TYPES = {
    "int32": (pa.int32(), -(2**31), 2**31 - 1),
    "int64": (pa.int64(), -(2**63), 2**63 - 1),
    "uint32": (pa.uint32(), 0, 2**32 - 1),
    "uint64": (pa.uint64(), 0, 2**64 - 1),
}


def policy(rule: str = "{op: tokenize, domain: subject}", entities: str = "") -> object:
    return parse_policy(f"version: 1\ndataset: t\n{entities}columns:\n  x: {rule}\n")


def band(v: int) -> tuple[bool, int]:
    m = v if v >= 0 else -v - 1
    return v < 0, sum(m >= lo for lo in (2**31, 2**32, 2**63))


def values_of(type_name: str) -> st.SearchStrategy[list[int | None]]:
    _, lo, hi = TYPES[type_name]
    edges = st.sampled_from([v for v in (lo, hi, 0, -1, 2**31 - 1, 2**31, 2**32) if lo <= v <= hi])
    return st.lists(st.one_of(st.none(), st.integers(lo, hi), edges), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), type_name=st.sampled_from(sorted(TYPES)), reversible=st.booleans())
def test_tokens_keep_type_sign_band_and_never_merge(
    data: st.DataObject, type_name: str, reversible: bool
) -> None:
    dtype = TYPES[type_name][0]
    values = data.draw(values_of(type_name))
    rule = f"{{op: tokenize, domain: subject, reversible: {str(reversible).lower()}}}"
    res = Masker(policy(rule), RING).mask_batch(
        pa.RecordBatch.from_pydict({"x": pa.array(values, dtype)})
    )
    assert res.quarantine is None
    out = res.output.column("x")
    assert out.type == dtype
    tokens = out.to_pylist()
    assert [t is None for t in tokens] == [v is None for v in values]
    pairs = {v: t for v, t in zip(values, tokens, strict=True) if v is not None}
    for v, t in zip(values, tokens, strict=True):
        if v is not None:
            assert t == pairs[v]  # consistent within the column
            assert band(t) == band(v)  # sign and magnitude band kept: it fits the type
    assert len(set(pairs.values())) == len(pairs)  # a permutation: no two keys merge
    if reversible:
        back = Unmasker(policy(rule), RING).mask_batch(res.output)
        assert back.quarantine is None
        assert back.output.column("x").to_pylist() == values


def test_dense_serial_keys_do_not_collide_and_split_batches_agree() -> None:
    ids = pa.array(range(1, 100_001), pa.int64())
    m = Masker(policy(), RING)
    whole = m.mask_batch(pa.RecordBatch.from_pydict({"x": ids}))
    tokens = whole.output.column("x")
    assert len(pc.unique(tokens)) == len(ids)
    halves = [
        m.mask_batch(pa.RecordBatch.from_pydict({"x": ids.slice(a, 50_000)})).output.column("x")
        for a in (50_000, 0)
    ]
    assert pa.concat_arrays([halves[1], halves[0]]).equals(tokens)
    # the tokens look nothing like the keys: not ordered, not near them
    firsts = tokens.slice(0, 1000).to_pylist()
    assert firsts != sorted(firsts)
    assert sum(abs(t - v) < 1000 for t, v in zip(firsts, range(1, 1001), strict=True)) < 5


def test_widths_agree_and_domains_and_modes_differ() -> None:
    values = [0, 7, -7, 123_456, 2**31 - 1, -(2**31)]
    tokens = {}
    for name, dtype in (("int32", pa.int32()), ("int64", pa.int64())):
        res = Masker(policy(), RING).mask_batch(
            pa.RecordBatch.from_pydict({"x": pa.array(values, dtype)})
        )
        tokens[name] = res.output.column("x").to_pylist()
    assert tokens["int32"] == tokens["int64"]
    unsigned = [v for v in values if v >= 0]
    for dtype in (pa.uint32(), pa.uint64()):
        res = Masker(policy(), RING).mask_batch(
            pa.RecordBatch.from_pydict({"x": pa.array(unsigned, dtype)})
        )
        assert res.output.column("x").to_pylist() == [
            t for v, t in zip(values, tokens["int64"], strict=True) if v >= 0
        ]
    other = Masker(policy("{op: tokenize, domain: other}"), RING)
    rev = Masker(policy("{op: tokenize, domain: subject, reversible: true}"), RING)
    batch = pa.RecordBatch.from_pydict({"x": pa.array(values, pa.int64())})
    for m in (other, rev):
        got = m.mask_batch(batch).output.column("x").to_pylist()
        assert sum(a == b for a, b in zip(got, tokens["int64"], strict=True)) == 0


def test_join_and_date_shift_on_integer_subject_key() -> None:
    ents = "entities:\n  subject: {column: sid}\n"
    pol = parse_policy(
        "version: 1\ndataset: t\n" + ents + "tables:\n"
        "  subjects:\n    columns:\n      sid: {op: tokenize, domain: subject}\n"
        "      born: {op: date_shift, entity: subject}\n"
        "  captures:\n    columns:\n      sid: {op: tokenize, domain: subject}\n"
        "      at: {op: date_shift, entity: subject}\n"
    )
    subjects = pa.RecordBatch.from_pydict(
        {"sid": pa.array([1, 2, 3], pa.int64()), "born": [dt.date(1990, 1, 1)] * 3}
    )
    captures = pa.RecordBatch.from_pydict(
        {"sid": pa.array([3, 1, 1, 2, 3], pa.int32()), "at": [dt.date(2024, 5, 1)] * 5}
    )
    s = Masker(pol, RING, table="subjects").mask_batch(subjects).output
    c = Masker(pol, RING, table="captures").mask_batch(captures).output
    assert c.column("sid").type == pa.int32()  # each table keeps its own type
    c = c.set_column(0, "sid", c.column("sid").cast(pa.int64()))
    joined = pa.table(c).join(pa.table(s), "sid")
    assert joined.num_rows == 5
    # per subject, the capture is still 34 years and 4 months after birth
    for row in joined.to_pylist():
        assert row["at"] - row["born"] == dt.date(2024, 5, 1) - dt.date(1990, 1, 1)


def test_permutation_decrypts_at_the_top_of_each_band() -> None:
    cipher = FF1(bytes(range(32)), 2)
    edges = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    values = pa.array(edges, pa.uint64())
    tokens, bad = permute_integers(cipher, values)
    assert not bad.any()
    assert [band(t) for t in tokens.to_pylist()] == [band(v) for v in edges]
    back, bad = permute_integers(cipher, tokens, decrypt=True)
    assert not bad.any()
    assert back.to_pylist() == edges


@pytest.mark.parametrize("rule", ["{op: tokenize, domain: subject}", "{op: hash, domain: s}"])
def test_no_original_value_in_output(rule: str) -> None:
    ids = pa.array(range(10**9, 10**9 + 2000), pa.int64())
    out = Masker(policy(rule), RING).mask_batch(pa.RecordBatch.from_pydict({"x": ids}))
    kept = pc.is_in(out.output.column("x").cast(pa.string()), ids.cast(pa.string()))
    assert not pc.any(kept).as_py()


def test_templates_bound_to_an_integer_subject_key(tmp_path: object) -> None:
    from pathlib import Path

    ring = Keyring.create(Path(str(tmp_path)) / "k.json", "pw")
    pol = parse_policy(
        "version: 1\ndataset: t\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: tokenize, domain: subject}\n"
        "  face: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    raw = [bytes([i]) * 64 for i in range(4)]
    b = pa.RecordBatch.from_pydict({"sid": pa.array([10, 11, 10, 12], pa.int64()), "face": raw})
    masked = Masker(pol, ring).mask_batch(b)
    assert masked.quarantine is None
    back = Unmasker(pol, ring).mask_batch(masked.output)
    assert back.output.column("face").to_pylist() == raw
    # a ciphertext moved to another subject's row does not open
    faces = masked.output.column("face").to_pylist()
    swapped = pa.RecordBatch.from_arrays(
        [masked.output.column("sid"), pa.array([faces[1], faces[0], *faces[2:]], pa.binary())],
        schema=masked.output.schema,
    )
    from biomask.errors import DecryptionError

    with pytest.raises(DecryptionError):
        Unmasker(pol, ring).mask_batch(swapped)
