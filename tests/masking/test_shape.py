import string

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask.keys import DeterministicPrf, Keyring
from biomask.masking.shape import shape_tokens

RING = Keyring.ephemeral()
PRF = DeterministicPrf(RING.derive("tokenize", "t"))


def cls(c: str) -> str:
    if c.isdigit():
        return "d"
    if c.isalpha():
        return "U" if c.isupper() else "l"
    return c


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-_ ./:@", max_size=40),
        min_size=1,
        max_size=30,
    )
)
def test_shape_keeps_length_classes_separators(values: list[str]) -> None:
    out = shape_tokens(PRF, pa.array(values, pa.string()), prefix=None).to_pylist()
    for v, t in zip(values, out, strict=True):
        assert len(t) == len(v)
        assert [cls(c) for c in v] == [cls(c) for c in t]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=20))
def test_any_unicode_keeps_length_and_is_deterministic(values: list[str]) -> None:
    arr = pa.array(values, pa.string())
    a = shape_tokens(PRF, arr).to_pylist()
    b = shape_tokens(PRF, pa.array(list(reversed(values)), pa.string())).to_pylist()
    assert a == list(reversed(b))
    assert [len(x) for x in a] == [len(x) for x in values]


def test_auto_prefix() -> None:
    out = shape_tokens(
        PRF, pa.array(["BIO-41937913", "SUBJ-00012345", "AB12", "ABCDEFG-1"])
    ).to_pylist()
    assert out[0].startswith("BIO-") and out[0] != "BIO-41937913"
    assert out[1].startswith("SUBJ-")
    assert not out[2].startswith("AB") or out[2][2:] != "12"
    assert not out[3].startswith("ABCDEFG")  # more than six letters is not a fixed prefix


def test_literal_prefix() -> None:
    out = shape_tokens(PRF, pa.array(["XY1234", "ZZ9999"]), prefix="XY").to_pylist()
    assert out[0].startswith("XY")
    assert not out[1].startswith("ZZ9999")


def test_domains_differ() -> None:
    other = DeterministicPrf(RING.derive("tokenize", "u"))
    a = shape_tokens(PRF, pa.array(["SUBJ-00012345"])).to_pylist()
    b = shape_tokens(other, pa.array(["SUBJ-00012345"])).to_pylist()
    assert a != b
