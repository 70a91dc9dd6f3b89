"""Detection: Presidio + spaCy set up offline, the recognizers Presidio lacks, segments."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from biomask.errors import PolicyError
from biomask.masking.text.engine import (
    ALWAYS_DETECTED,
    TextEngine,
    check_model,
    detect,
    get_engine,
    nlp_configuration,
    segments,
)
from biomask.masking.text.recognizers import (
    CommaNameRecognizer,
    IcaoDocumentRecognizer,
    InitialNameRecognizer,
    InternationalPhoneRecognizer,
    OfflineEmailRecognizer,
    SignatureNameRecognizer,
    TitledNameRecognizer,
)
from biomask.masking.text.words import icao_check_digit, load_vocabulary, needs_ner

from .conftest import MODEL


def _found(rec: Any, text: str) -> list[tuple[str, float]]:
    return [(text[r.start : r.end], r.score) for r in rec.analyze(text, [])]


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("Please call back on +44 20 7946 0958 about it.", "+44 20 7946 0958"),
        ("Mobile +1 (202) 555-0143 verified by SMS code.", "+1 (202) 555-0143"),
        ("Contact number given by J. Avery: 020 7946 0958.", "020 7946 0958"),
        ("Could not be reached on (11) 91234-5678.", "(11) 91234-5678"),
        ("Call 22 123 45 67 tomorrow.", "22 123 45 67"),
        ("Mobile +447700900123 verified.", "+447700900123"),
        ("Reach me at 0049 30 1234567.", "0049 30 1234567"),
    ],
)
def test_phone_formats(text: str, phone: str) -> None:
    got = _found(InternationalPhoneRecognizer(), text)
    assert [p for p, s in got if s >= 0.35] == [phone]


@pytest.mark.parametrize(
    "text",
    [
        "Capture completed at 12:48 at booth 10.",
        "Dates 2024-01-15 and 12/05/2024.",
        "Card 4111 1111 1111 1111.",
        "Ticket INC-5978 raised; device DV-7F3A-22918.",
        "1" * 60,
        "Power cut for 12 minutes.",
    ],
)
def test_not_phones(text: str) -> None:
    assert [p for p, s in _found(InternationalPhoneRecognizer(), text) if s >= 0.35] == []


def test_icao_document_numbers_by_check_digit_and_context() -> None:
    rec = IcaoDocumentRecognizer()
    body = "TR230578"
    number = body + str(icao_check_digit(body))
    bad = body + str((icao_check_digit(body) + 1) % 10)
    assert _found(rec, f"Applicant presented passport {number}.") == [(number, 0.95)]
    assert _found(rec, f"Reference {number} noted.") == [(number, 0.6)]
    assert _found(rec, f"Passport {bad} checked.") == [(bad, 0.5)]
    assert _found(rec, f"Reference {bad} noted.") == []
    assert _found(rec, "Ticket INC-5978 and DV-7F3A-22918.") == []


def test_emails_with_reserved_domains_are_found_offline() -> None:
    rec = OfflineEmailRecognizer()
    text = "Signed\n-- \nLope Ródenas\nlope.rodenas@enrol.example and a@b.co, not a@b"
    assert [t for t, _ in _found(rec, text)] == ["lope.rodenas@enrol.example", "a@b.co"]


def test_name_shapes() -> None:
    text = (
        "Checked by Ms Petrosyan. J. Avery said PETROSYAN, Isabel was there. Dr. Jan Kowal ok."
        "\n-- \nLope Ródenas\nlope@x.example"
    )
    assert [t for t, _ in _found(TitledNameRecognizer(), text)] == ["Ms Petrosyan", "Dr. Jan Kowal"]
    assert [t for t, _ in _found(InitialNameRecognizer(), text)] == ["J. Avery"]
    assert [t for t, _ in _found(CommaNameRecognizer(), text)] == ["PETROSYAN, Isabel"]
    assert [t for t, _ in _found(SignatureNameRecognizer(), text)] == ["Lope Ródenas"]


def _analyze(text: str) -> list[tuple[str, str]]:
    engine = get_engine(MODEL, "en")
    return [
        (text[d.start : d.end], d.entity_type)
        for d in engine.analyze([text], ALWAYS_DETECTED, 0.35)[0]
    ]


def test_engine_finds_unknown_names_and_drops_ordinary_words() -> None:
    assert _analyze("Checked by Somtochukwu Olaiya.") == [("Somtochukwu Olaiya", "PERSON")]
    assert _analyze("Second opinion from UYÊN LÂM: accepted.") == [("UYÊN LÂM", "PERSON")]
    assert _analyze("Handed over to Owokoniran, Olumorotimi for the capture.") == [
        ("Owokoniran, Olumorotimi", "PERSON")
    ]
    for filler in (
        "Subject requested an interpreter.",
        "Queue was long; capture completed at 12:48.",
        "Iris capture repeated twice because of reflections.",
        "Mobile verified by SMS code.",
        "Follow-up appointment scheduled for 15 May.",
    ):
        assert _analyze(filler) == [], filler


def test_disabled_types_are_not_reported() -> None:
    # dates, numbers, driver licences and URLs on e-mail domains are not PII here
    found = _analyze("Enrolment on 21 November 2024 at booth 12, ticket A1234567, mail.example.com")
    assert found == []


def test_no_network_at_load_or_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import tldextract

    monkeypatch.setattr(tldextract.TLDExtract, "__call__", refuse)
    engine = TextEngine(MODEL, "en")  # a fresh engine, not the cached one
    dets = engine.analyze(
        ["Receipt to isabel.p@mail.example; staff ops@enrol.example, www.example.com."],
        ALWAYS_DETECTED,
        0.35,
    )[0]
    assert [d.entity_type for d in dets] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]


def test_configuration_is_explicit() -> None:
    conf = nlp_configuration(MODEL, "en")
    assert conf["models"] == [{"lang_code": "en", "model_name": MODEL}]
    ignored = set(conf["ner_model_configuration"]["labels_to_ignore"])
    assert {"DATE", "TIME", "CARDINAL"} <= ignored
    engine = get_engine(MODEL, "en")
    assert engine.nlp.pipe_names == ["ner"]
    names = {r.name for r in engine.analyzer.registry.recognizers}
    assert "UsLicenseRecognizer" not in names and "UrlRecognizer" not in names
    assert "EmailRecognizer" not in names and "OfflineEmailRecognizer" in names


def test_missing_model_message() -> None:
    with pytest.raises(PolicyError) as err:
        check_model("xx_missing_model_sm", path="p.yaml", line=3)
    msg = str(err.value)
    assert msg.startswith("p.yaml:3: nlp.model: the spaCy model 'xx_missing_model_sm'")
    assert "pip install xx-missing-model-sm" in msg and "never downloads" in msg


def test_segments_keep_names_and_signatures_whole() -> None:
    note = (
        "Contact number given by J. Avery: 0161 496 0668. Document no. MD976 scanned. "
        "Queue was long.\n-- \nLope Ródenas\nlope@x.example"
    )
    parts = [note[a:b] for a, b in segments(note)]
    assert parts == [
        "Contact number given by J. Avery: 0161 496 0668.",
        "Document no. MD976 scanned.",
        "Queue was long.",
        "-- \nLope Ródenas\nlope@x.example",
    ]
    long = "word " * 10_000
    assert all(b - a <= 20_000 for a, b in segments(long))


def test_ner_is_skipped_only_where_it_cannot_add_a_name() -> None:
    vocab = load_vocabulary(MODEL, "en")
    assert not needs_ner("Sensor cleaned before the second attempt.", [], vocab)
    assert not needs_ner("Follow-up appointment scheduled for 15 May.", [], vocab)
    assert needs_ner("Checked by Somtochukwu Olaiya.", [], vocab)
    assert not needs_ner("Checked by Somtochukwu Olaiya.", [(11, 29)], vocab)
    assert needs_ner("handed over to jan kowalczyk", [], vocab)


def test_detect_chunks_are_the_same_in_and_out_of_the_pool() -> None:
    texts = [f"Checked by Somtochukwu Olaiya {i}. Call +44 20 7946 0{i:03d}." for i in range(600)]
    kw: dict[str, Any] = dict(model=MODEL, language="en", entities=ALWAYS_DETECTED, threshold=0.35)
    flags = [i % 3 != 0 for i in range(600)]
    assert detect(texts, workers=1, ner=flags, **kw) == detect(
        texts, workers=2, pool_min=0, ner=flags, **kw
    )
