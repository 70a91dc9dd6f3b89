"""Reversible tokens and unmask: classes kept per position, check digits valid, exact reversal."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask.errors import KeyringError, PolicyError
from biomask.keys import Keyring
from biomask.masking import Masker, Unmasker
from biomask.masking.checkdigits import icao_check_digit, luhn_check_digit
from biomask.policies import parse_policy

RING = Keyring.ephemeral()
POLICY = parse_policy(
    """\
version: 1
dataset: t
columns:
  doc: {op: tokenize, domain: passport, reversible: true, format: icao_document}
  sid: {op: tokenize, domain: subject, reversible: true}
  card: {op: tokenize, domain: card, reversible: true, format: luhn}
  phone: {op: phone, domain: phone, reversible: true}
  name: {op: pseudonym, domain: person}
"""
)


def roundtrip(cols: dict[str, list[str]]) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    masked = Masker(POLICY, RING).mask_batch(pa.RecordBatch.from_pydict(cols))
    assert masked.quarantine is None
    back = Unmasker(POLICY, RING).mask_batch(masked.output)
    assert back.quarantine is None
    return masked.output, back.output


def cls(c: str) -> str:
    return "d" if c.isdigit() else ("U" if c.isupper() else ("l" if c.islower() else c))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=8),
        min_size=1,
        max_size=20,
    ),
    st.lists(
        st.from_regex(r"SUBJ-[0-9]{8}|[A-Z]{2}-[0-9a-z]{7}", fullmatch=True),
        min_size=1,
        max_size=20,
    ),
    st.lists(st.text(alphabet="0123456789", min_size=15, max_size=15), min_size=1, max_size=20),
)
def test_roundtrip_keeps_classes_and_check_digits(
    bodies: list[str], ids: list[str], cards: list[str]
) -> None:
    n = min(len(bodies), len(ids), len(cards))
    docs = [b + icao_check_digit(b) for b in bodies[:n]]
    cards = [c + luhn_check_digit(c) for c in cards[:n]]
    phones = ["+44 20 7946 0958"] * n
    cols = {"doc": docs, "sid": ids[:n], "card": cards, "phone": phones, "name": ["Ana Lopez"] * n}
    out, back = roundtrip(cols)
    for original, token in zip(docs, out.column("doc").to_pylist(), strict=True):
        assert [cls(c) for c in original[:-1]] == [cls(c) for c in token[:-1]]
        assert token[-1] == icao_check_digit(token[:-1])
    for original, token in zip(ids[:n], out.column("sid").to_pylist(), strict=True):
        assert [cls(c) for c in original] == [cls(c) for c in token]
        if original.startswith("SUBJ-"):
            assert token.startswith("SUBJ-")
    for token in out.column("card").to_pylist():
        assert token[-1] == luhn_check_digit(token[:-1])
    assert back.column("doc").to_pylist() == docs
    assert back.column("sid").to_pylist() == ids[:n]
    assert back.column("card").to_pylist() == cards
    assert back.column("phone").to_pylist() == phones
    # irreversible columns stay masked
    assert back.column("name").to_pylist() == out.column("name").to_pylist() != ["Ana Lopez"] * n


def test_small_domain_and_bad_check_digit_are_quarantined() -> None:
    pol = parse_policy(
        "version: 1\ndataset: t\ncolumns:\n"
        "  a: {op: tokenize, domain: a, reversible: true}\n"
        "  d: {op: tokenize, domain: d, reversible: true, format: icao_document}\n"
    )
    res = Masker(pol, RING).mask_batch(
        pa.RecordBatch.from_pydict({"a": ["12345", "1234567"], "d": ["L898902C36", "L898902C37"]})
    )
    assert res.output.num_rows == 0 or res.output.column("a").to_pylist() != ["1234567"]
    reasons = res.quarantine.column("_biomask_reason").to_pylist() if res.quarantine else []
    assert reasons[0].startswith("a: FF1 domain smaller than 10^6 values (NIST SP 800-38G)")
    assert any("not a valid icao_document number" in r for r in reasons)


def test_load_time_domain_refusal() -> None:
    with pytest.raises(
        PolicyError,
        match=r"columns.pin: reversible tokenize uses FF1, which NIST SP 800-38G refuses on domains smaller than 10\^6 values; 4 digits give 10,000: use irreversible tokenize",
    ):
        parse_policy(
            "version: 1\ndataset: t\ncolumns:\n  pin: {op: tokenize, domain: pin, reversible: true, length: 4}\n"
        )
    parse_policy(
        "version: 1\ndataset: t\ncolumns:\n  p: {op: tokenize, domain: p, reversible: true, length: 9, charset: alphanumeric, format: icao_document}\n"
    )


def test_unmask_refuses_another_keyring_without_detail() -> None:
    masked = Masker(POLICY, RING).mask_batch(
        pa.RecordBatch.from_pydict(
            {
                "doc": ["L898902C36"],
                "sid": ["SUBJ-00000001"],
                "card": ["79927398713"],
                "phone": ["+44 20 7946 0958"],
                "name": ["Ana Lopez"],
            }
        )
    )
    other = Keyring.ephemeral()
    with pytest.raises(
        KeyringError,
        match=r"is not the one that masked the data \(keyring [0-9a-f]+, key [0-9a-f]+\); unmask needs that keyring",
    ):
        Unmasker(POLICY, other).mask_batch(masked.output)
    stripped = masked.output.replace_schema_metadata(None)
    with pytest.raises(
        KeyringError,
        match=r"carries no biomask key id \(was it written by 'biomask mask' to Parquet, Arrow "
        r"or PostgreSQL\? CSV and JSON Lines cannot carry it\); cannot tell which key reverses it",
    ):
        Unmasker(POLICY, RING).mask_batch(stripped)
