"""Prose outside enrolment notes: support tickets, CV headers, letters (issue #21)."""

from __future__ import annotations

import re

import pytest

from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.text.quality import measure
from biomask.policies import parse_policy
from tests.masking.text import corpus_general


@pytest.fixture(scope="module")
def masked() -> tuple[list[corpus_general.Record], list[str]]:
    recs = corpus_general.build(200)
    pol = parse_policy("version: 1\ndataset: d\ncolumns:\n  notes: {op: text}\n")
    op = Masker(pol, Keyring.ephemeral()).operators["notes"]
    out, _ = op.mask_texts([r.text for r in recs])
    return recs, out


def test_every_record_reads_as_its_template_with_every_slot_changed(masked: tuple) -> None:
    recs, out = masked
    wrong = []
    for r, o in zip(recs, out, strict=True):
        m = re.fullmatch(r.pattern, o, re.S)
        if m is None:
            wrong.append((r.text, o))
            continue
        for (value, kind), got in zip(r.slots, m.groups(), strict=True):
            expected = "<DATE>" if kind == "DATE" else f"<{_TAG[kind]}>"
            if got != expected:
                wrong.append((kind, value, got))
    assert wrong == []


_TAG = {
    "PERSON": "PERSON",
    "PHONE": "PHONE_NUMBER",
    "CARD": "CREDIT_CARD",
    "EMAIL": "EMAIL_ADDRESS",
    "IBAN": "IBAN_CODE",
    "SSN": "US_SSN",
    "NINO": "UK_NINO",
}


def test_scores(masked: tuple) -> None:
    recs, out = masked
    q = measure(
        [r.text for r in recs],
        out,
        [r.pii + r.dates for r in recs],
        [r.kinds + ["DATE"] * len(r.dates) for r in recs],
    )
    assert q.pii > 600 and set(q.pii_by_kind) == {*_TAG, "DATE"}
    assert q.survived == 0, q.survivors[:5]
    assert q.words_changed == 0


def test_formats_beyond_the_demo_are_all_planted() -> None:
    text = "\n".join(r.text for r in corpus_general.build(400))
    for shape in (
        r"\d{3}-\d{3}-\d{4}x\d+",
        r"\(\d{3}\)\d{3}-\d{4}x\d+",
        r"\d{3}\.\d{3}\.\d{4}x\d+",
        r"001-\d{3}-\d{3}-\d{4}x\d+",
        r"(?<![\d-])35\d{17}(?!\d)",  # a 19-digit JCB, unseparated
        r"(?<![\d-])2[27]\d{14}(?!\d)",  # 2-series Mastercard
        r"\d{3}-\d{2}-\d{4}",
        r"[A-Z]{2} \d{2} \d{2} \d{2} [A-D]",
        r"GB\d{2} ?WEST",
        r"[A-Z][a-z]+ \d{1,2}, \d{4}",
        r"\d{1,2} [A-Z][a-z]{2} \d{4}",
    ):
        assert re.search(shape, text), shape
