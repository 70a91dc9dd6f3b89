"""The run's handshake: the Masker declares, the caller reads, one frozen object hands over."""

from __future__ import annotations

import dataclasses
import pickle

import pyarrow as pa
import pytest

from biomask import mask
from biomask.keys import Keyring
from biomask.masking import Masker, RunNeeds, RunServices, Unmasker
from biomask.policies import Policy, policy_from_dict

TEXT = {"op": "text", "entities": {"PERSON": "person", "EMAIL_ADDRESS": "email"}}


def _policy(*, text_in_people: bool = False) -> Policy:
    people: dict[str, object] = {
        "id": {"op": "tokenize", "domain": "subject"},
        "full_name": {"op": "pseudonym", "domain": "person"},
        "email": {"op": "email", "domain": "email"},
        "template": {"op": "encrypt", "entity": "subject"},
    }
    if text_in_people:
        people["bio"] = TEXT
    return policy_from_dict(
        {
            "version": 1,
            "dataset": "people",
            "entities": {"subject": {"column": "id"}},
            "tables": {
                "people": {"columns": people},
                "notes": {"columns": {"note": TEXT, "city": {"op": "redact"}}},
            },
        }
    )


PEOPLE = pa.table(
    {
        "id": ["P-000001", "P-000002"],
        "full_name": ["Isabel Petrosyan", "Ana Lindqvist"],
        "email": ["isabel.p@example.org", "ana@example.org"],
        "template": [b"\x01" * 16, b"\x02" * 16],
    }
)


def test_maskers_declare_what_they_need_and_nothing_else() -> None:
    ring = Keyring.ephemeral()
    pol = _policy()
    people, notes = Masker(pol, ring, table="people"), Masker(pol, ring, table="notes")
    # the lexicon wants the linked columns of every table, from the table with the notes
    assert dict(notes.needs().preread) == {"people": ("full_name", "email")}
    assert not notes.needs().keystore
    # the templates' table needs the key store and no pre-read
    assert people.needs() == RunNeeds(keystore=True)
    both = RunNeeds.union([people.needs(), notes.needs()])
    assert both == RunNeeds({"people": ("full_name", "email")}, keystore=True)
    # reversal does not read notes: only the key store its templates need
    assert Unmasker(pol, ring, table="notes").needs() == RunNeeds()
    assert Unmasker(pol, ring, table="people").needs() == RunNeeds(keystore=True)
    no_text = policy_from_dict({"version": 1, "dataset": "d", "columns": {"a": {"op": "keep"}}})
    assert not Masker(no_text, ring).needs()


def test_needs_merge_without_duplicates() -> None:
    a = RunNeeds({"t": ("x", "y")})
    b = RunNeeds({"t": ("y", "z"), "u": ("w",)}, keystore=True)
    assert a | b == RunNeeds({"t": ("x", "y", "z"), "u": ("w",)}, keystore=True)
    assert RunNeeds({"t": ()}) == RunNeeds()  # a table with no columns is no need


def test_services_are_frozen() -> None:
    services = RunServices({"people": PEOPLE.select(["full_name"])}, keystore_uri="memory:")
    with pytest.raises(dataclasses.FrozenInstanceError):
        services.keystore_uri = "elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        services.preread["notes"] = PEOPLE  # type: ignore[index]
    needs = RunNeeds({"people": ("full_name",)})
    with pytest.raises(TypeError):
        needs.preread["people"] = ("email",)  # type: ignore[index]


def test_from_tables_takes_only_the_declared_columns() -> None:
    needs = RunNeeds({"people": ("full_name", "email", "missing"), "other": ("x",)})
    services = RunServices.from_tables({"people": PEOPLE}, needs, keystore_uri="ks.sqlite")
    assert list(services.preread) == ["people"]
    assert services.preread["people"].column_names == ["full_name", "email"]
    assert services.keystore_uri is None  # nobody declared a key store
    keyed = RunServices.from_tables({}, RunNeeds(keystore=True), keystore_uri="ks.sqlite")
    assert keyed.keystore_uri == "ks.sqlite"


def test_one_lexicon_per_run_shared_by_every_text_column_of_every_table() -> None:
    ring = Keyring.ephemeral()
    pol = _policy(text_in_people=True)
    maskers = {t: Masker(pol, ring, table=t) for t in ("people", "notes")}
    needs = RunNeeds.union(m.needs() for m in maskers.values())
    services = RunServices.from_tables({"people": PEOPLE}, needs)
    for m in maskers.values():
        m.prepare(services)
    bio = maskers["people"].operators["bio"].lexicon
    note = maskers["notes"].operators["note"].lexicon
    assert bio is note and note.prepared and len(note) > 0
    # an unprepared Masker masks on defaults: an empty lexicon, never another run's
    fresh = Masker(pol, ring, table="notes").operators["note"].lexicon
    assert fresh is not note and not fresh.prepared and len(fresh) == 0


def test_services_travel_to_workers_without_what_was_derived() -> None:
    ring = Keyring.ephemeral()
    pol = _policy()
    notes = Masker(pol, ring, table="notes")
    services = RunServices.from_tables({"people": PEOPLE}, notes.needs(), keystore_uri=None)
    notes.prepare(services)  # builds the lexicon, which refuses to be pickled
    copy = pickle.loads(pickle.dumps(services))
    assert copy == services and copy.preread["people"].equals(services.preread["people"])
    again = Masker(pol, ring, table="notes")
    again.prepare(copy)  # the worker builds its own, from the same columns
    lex, own = notes.operators["note"].lexicon, again.operators["note"].lexicon
    assert own is not lex and len(own) == len(lex)
    note = pa.record_batch([pa.array(["Met PETROSYAN, Isabel today."])], names=["note"])
    note = note.append_column("city", pa.array(["Oslo"]))
    assert notes.mask_batch(note).output.equals(again.mask_batch(note).output)


def test_the_api_prepares_the_masker_from_the_rows_it_is_given() -> None:
    ring = Keyring.ephemeral()
    pol = policy_from_dict(
        {
            "version": 1,
            "dataset": "d",
            "columns": {
                "full_name": {"op": "pseudonym", "domain": "person"},
                "note": {"op": "text", "entities": {"PERSON": "person"}},
            },
        }
    )
    # a lone "lindqvist" reads as the full_name column's family pseudonym only because
    # that column made it a known value of the run (NER alone gives it another name)
    tbl = pa.table({"full_name": ["Ana Lindqvist"], "note": ["lindqvist called back."]})
    masked = mask(tbl, pol, ring).to_pylist()[0]
    family = masked["full_name"].split()[-1].lower()
    assert masked["note"].split()[0] == family
    unprepared = Masker(pol, ring).mask_batch(tbl.to_batches()[0]).output.to_pylist()[0]
    assert unprepared["full_name"] == masked["full_name"]
    assert unprepared["note"].split()[0] != family
