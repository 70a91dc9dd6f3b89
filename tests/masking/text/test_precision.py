"""Names that are ordinary words: the words stay, the people's names go (issue #21)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from biomask.keys import Keyring
from tests.masking.text import corpus_precision
from tests.masking.text.test_operator import _one_person_policy, _run_notes


@pytest.fixture(scope="module")
def masked_corpus() -> tuple[list[corpus_precision.Sentence], list[str | None], dict]:
    ring = Keyring.ephemeral()
    names, corpus = corpus_precision.build()
    people = pa.table(
        {"full_name": names, "email": [f"p{i}@example.org" for i in range(len(names))]}
    )
    out, masked = _run_notes(_one_person_policy(), ring, people, [s.text for s in corpus])
    pseudo = {
        tuple(n.split()): tuple(m.split())
        for n, m in zip(names, masked["full_name"].to_pylist(), strict=True)
    }
    return corpus, out, pseudo


def test_corpus_is_large_enough() -> None:
    _, corpus = corpus_precision.build()
    assert len(corpus) >= 500
    assert sum(not s.is_name for s in corpus) >= 450


def test_ordinary_words_are_left_alone(masked_corpus: tuple) -> None:
    corpus, out, _ = masked_corpus
    wrong = [(s.text, o) for s, o in zip(corpus, out, strict=True) if not s.is_name and o != s.text]
    assert wrong == []


def test_the_peoples_names_are_replaced(masked_corpus: tuple) -> None:
    corpus, out, pseudo = masked_corpus
    wrong = [
        (s.text, o, s.expect(pseudo))
        for s, o in zip(corpus, out, strict=True)
        if s.is_name and o != s.expect(pseudo)
    ]
    assert wrong == []


def test_a_large_cell_has_the_precision_of_short_notes(masked_corpus: tuple) -> None:
    corpus, _, _ = masked_corpus
    ring = Keyring.ephemeral()
    names, _ = corpus_precision.build()
    people = pa.table(
        {"full_name": names, "email": [f"p{i}@example.org" for i in range(len(names))]}
    )
    # about 1 MiB: the corpus over and over, one sentence a line
    lines = [s.text for s in corpus] * 30
    big = "\n".join(lines)
    assert len(big.encode()) > 1_000_000
    (got,), masked = _run_notes(_one_person_policy(max_text_bytes=4 << 20), ring, people, [big])
    mapping = {
        tuple(n.split()): tuple(m.split())
        for n, m in zip(names, masked["full_name"].to_pylist(), strict=True)
    }
    assert got == "\n".join([s.expect(mapping) for s in corpus] * 30)
