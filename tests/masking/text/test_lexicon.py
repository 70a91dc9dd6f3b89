"""The known-value lexicon: keyed hashes only, found in any case, order and format."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from biomask.keys.primitives import DeterministicPrf
from biomask.masking.operators.names import NameMapper
from biomask.masking.text.lexicon import ROLE_FAMILY, ROLE_GIVEN, Lexicon


def _lex() -> Lexicon:
    from biomask.keys import Keyring

    mapper = NameMapper(DeterministicPrf(Keyring.ephemeral().derive("pseudonym", "person")))
    lex = Lexicon()
    lex.add("person", "name", pa.array(["Isabel Petrosyan", "Jan Kowal", None]), mapper)
    lex.add("email", "email", pa.array(["Isabel.P@Example.org"]))
    lex.add("phone", "phone", pa.array(["+44 20 7946 0958"]))
    lex.add("passport", "token", pa.array(["TR2305785"]))
    return lex


def _found(lex: Lexicon, text: str) -> list[tuple[str, str]]:
    return [(text[h.start : h.end], h.domain) for h in lex.find([text])[0]]


def test_names_any_case_order_and_accent() -> None:
    lex = _lex()
    assert _found(lex, "PETROSYAN, Isabel met jan kowal and Ms Petrosyán.") == [
        ("PETROSYAN, Isabel", "person"),
        ("jan kowal", "person"),
        ("Petrosyán", "person"),
    ]
    assert _found(lex, "I. Petrosyan") == [("I. Petrosyan", "person")]
    # a lone lower-case word may be an ordinary word: not taken alone
    assert _found(lex, "the kowal was") == []
    assert lex.name_role("person", "PETROSYAN") == ROLE_FAMILY
    assert lex.name_role("person", "isabel") == ROLE_GIVEN
    assert lex.name_role("person", "Smith") == 0


def test_initial_maps_to_the_known_given_names_pseudonym_initial() -> None:
    lex = _lex()
    got = lex.initial_for("person", "Petrosyan", "I")
    assert got is not None and len(got) == 1 and got.isupper()
    assert lex.initial_for("person", "Petrosyan", "K") is None


def test_values_in_other_formats() -> None:
    lex = _lex()
    text = "Mail ISABEL.P@EXAMPLE.ORG, call 020 7946 0958 or +442079460958, doc TR2305785."
    assert _found(lex, text) == [
        ("ISABEL.P@EXAMPLE.ORG", "email"),
        ("020 7946 0958", "phone"),
        ("+442079460958", "phone"),
        ("TR2305785", "passport"),
    ]


def test_only_keyed_hashes_are_kept() -> None:
    lex = _lex()
    state = repr(vars(lex)).lower()
    for plain in ("isabel", "petrosyan", "kowal", "example", "tr2305785", "trunk"):
        assert plain not in state
    assert len(lex) > 0
    other = Lexicon()
    other.add("person", "name", pa.array(["Isabel Petrosyan"]))
    assert len(other) == 2
    mine, theirs = lex._names["person"], other._names["person"]
    assert len(mine) and len(theirs)
    assert len(np.intersect1d(mine.keys, theirs.keys)) == 0  # a key per lexicon


def test_large_columns_are_hashed_in_bulk() -> None:
    lex = Lexicon()

    def word(i: int) -> str:
        letters = ""
        while True:
            i, r = divmod(i, 26)
            letters += chr(97 + r)
            if not i:
                return letters

    names = pa.array(
        [f"Gi{word(i % 977)} Mi{word(i % 13)} Fa{word(i)}" for i in range(50_000)]
        + ["Dr Tia Zed", "Lowe, Ann", "J. Kay"]
    )
    lex.add("person", "name", names)
    assert lex.name_role("person", "fa" + word(123)) == ROLE_FAMILY
    assert lex.name_role("person", "Gi" + word(5)) == ROLE_GIVEN
    assert lex.name_role("person", "Zed") == ROLE_FAMILY and lex.name_role("person", "dr") == 0
    assert lex.name_role("person", "Lowe") == ROLE_FAMILY
    assert lex.name_role("person", "Ann") == ROLE_GIVEN
    text = f"Seen: FA{word(49_999).upper()}, Gi{word(3)}."
    assert _found(lex, text) == [(text[6:-1], "person")]
