"""biomask tokens through Presidio's AnonymizerEngine agree with biomask's columns."""

from __future__ import annotations

import pyarrow as pa
import pytest
from presidio_analyzer import RecognizerResult
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import InvalidParamError, OperatorConfig

from biomask.errors import PolicyError
from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.text.engine import ALWAYS_DETECTED
from biomask.masking.text.presidio_operator import BiomaskTokenizer, BiomaskTokenOperator
from biomask.policies import Policy, policy_from_dict

POLICY = policy_from_dict(
    {
        "version": 1,
        "dataset": "people",
        "columns": {
            "full_name": {"op": "pseudonym", "domain": "person"},
            "email": {"op": "email", "domain": "email"},
            "phone": {"op": "phone", "domain": "phone"},
            "note": {
                "op": "text",
                "entities": {"PERSON": "person", "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone"},
            },
        },
    }
)


def _columns(policy: Policy, ring: Keyring) -> dict[str, str]:
    batch = pa.record_batch(
        [
            pa.array(["Isabel Petrosyan"]),
            pa.array(["isabel.p@example.org"]),
            pa.array(["+44 20 7946 0958"]),
            pa.array([None], pa.string()),
        ],
        names=["full_name", "email", "phone", "note"],
    )
    out = Masker(policy, ring).mask_batch(batch).output
    return {c: out.column(c)[0].as_py() for c in ("full_name", "email", "phone")}


def test_presidio_anonymizer_with_biomask_tokens_matches_the_columns() -> None:
    ring = Keyring.ephemeral()
    text = "Isabel Petrosyan (isabel.p@example.org, +44 20 7946 0958) asked for a receipt."
    results = [
        RecognizerResult("PERSON", 0, 16, 0.85),
        RecognizerResult("EMAIL_ADDRESS", 18, 38, 1.0),
        RecognizerResult("PHONE_NUMBER", 40, 56, 0.85),
    ]
    engine = AnonymizerEngine()
    engine.add_anonymizer(BiomaskTokenOperator)
    tokenizer = BiomaskTokenizer(POLICY, ring)
    out = engine.anonymize(text, results, operators=tokenizer.operators()).text
    cols = _columns(POLICY, ring)
    assert out == (f"{cols['full_name']} ({cols['email']}, {cols['phone']}) asked for a receipt.")
    # and the text operator agrees with Presidio's output on the same note
    note = (
        Masker(POLICY, ring)
        .mask_batch(
            pa.record_batch(
                [
                    pa.array(["a"]),
                    pa.array(["a@b.co"]),
                    pa.array(["+1 202 555 0143"]),
                    pa.array([text]),
                ],
                names=["full_name", "email", "phone", "note"],
            )
        )
        .output.column("note")[0]
        .as_py()
    )
    assert note == out


def test_unlinked_type_is_tagged_never_passed_through() -> None:
    tokenizer = BiomaskTokenizer(POLICY, Keyring.ephemeral())
    assert tokenizer.token("4111 1111 1111 1111", "CREDIT_CARD") == "<CREDIT_CARD>"
    assert tokenizer.token("not an address", "EMAIL_ADDRESS") == "<EMAIL_ADDRESS>"
    assert set(ALWAYS_DETECTED) >= set(tokenizer.operators())


def test_operator_without_tokenizer_is_refused() -> None:
    engine = AnonymizerEngine()
    engine.add_anonymizer(BiomaskTokenOperator)
    with pytest.raises(InvalidParamError, match="BiomaskTokenizer"):
        engine.anonymize(
            "Isabel",
            [RecognizerResult("PERSON", 0, 6, 0.9)],
            operators={"PERSON": OperatorConfig("biomask", {})},
        )


def test_tokenizer_needs_linked_entities() -> None:
    bare = policy_from_dict(
        {"version": 1, "dataset": "d", "columns": {"email": {"op": "email", "domain": "email"}}}
    )
    with pytest.raises(PolicyError, match="no entity type is linked"):
        BiomaskTokenizer(bare, Keyring.ephemeral())
    tok = BiomaskTokenizer(bare, Keyring.ephemeral(), entities={"EMAIL_ADDRESS": "email"})
    assert tok.token("a.b@example.org", "EMAIL_ADDRESS").endswith("@example.org")
