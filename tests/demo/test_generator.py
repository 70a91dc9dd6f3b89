"""Tests of the synthetic enrolment generator and the pseudonym name pools."""

from __future__ import annotations

import datetime as dt
import io
import re
import unicodedata
from collections import Counter
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pytest

from biomask.demo import DemoData, generate, generate_structured, iter_structured_batches
from biomask.demo.generator import (
    _FINGERS,
    _MONTHS,
    _TITLES,
    CAPTURES_SCHEMA_BASE,
    FILLERS,
    LOCALES,
    NOTES_TRUTH_SCHEMA,
    STAFF_SENTENCES,
    STRUCTURED_SCHEMA,
    SUBJECT_SENTENCES,
    SUBJECTS_SCHEMA,
    _icao_check,
    source_names,
    to_ascii,
)

KINDS = {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "DOCUMENT_NUMBER"}


def fold(name: str) -> str:
    """Case- and accent-insensitive form, as the pseudonym operator compares names."""
    return to_ascii(name).casefold()


def ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


@pytest.fixture(scope="module")
def data() -> DemoData:
    return generate(1500, seed=11)


def pool(name: str) -> list[str]:
    text = (resources.files("biomask.masking") / "data" / name).read_text("utf-8")
    return text.splitlines()


# --- determinism and schema -------------------------------------------------------------


def test_same_seed_gives_byte_identical_tables() -> None:
    a, b = generate(200, seed=5), generate(200, seed=5)
    for x, y in [
        (a.subjects, b.subjects),
        (a.captures, b.captures),
        (a.notes_truth, b.notes_truth),
    ]:
        assert ipc_bytes(x) == ipc_bytes(y)
    c = generate(200, seed=6)
    assert not c.subjects.equals(a.subjects)


def test_schemas_are_exact(data: DemoData) -> None:
    assert data.subjects.schema == SUBJECTS_SCHEMA
    expected = pa.schema(
        [
            *CAPTURES_SCHEMA_BASE,
            pa.field("operator_notes", pa.string()),
            pa.field("template", pa.list_(pa.float32(), 512)),
        ]
    )
    assert data.captures.schema == expected
    assert data.notes_truth.schema == NOTES_TRUTH_SCHEMA
    assert data.captures.schema.field("capture_ts").type == pa.timestamp("us", tz="UTC")


def test_optional_columns() -> None:
    full = generate(100, seed=2, template_dim=16)
    bare = generate(100, seed=2, with_notes=False, with_templates=False)
    assert full.captures.schema.field("template").type == pa.list_(pa.float32(), 16)
    assert bare.captures.schema == CAPTURES_SCHEMA_BASE
    assert bare.notes_truth.num_rows == 0
    assert bare.notes_truth.schema == NOTES_TRUTH_SCHEMA
    # switching features off leaves every other column unchanged
    assert bare.subjects.equals(full.subjects)
    assert bare.captures.equals(full.captures.select(CAPTURES_SCHEMA_BASE.names))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate(0)
    with pytest.raises(ValueError):
        list(iter_structured_batches(10, 0))


# --- identifiers and relationships ------------------------------------------------------


def test_identifiers_are_unique_well_formed_and_not_sequential(data: DemoData) -> None:
    sids = data.subjects["subject_id"].to_pylist()
    cids = data.captures["capture_id"].to_pylist()
    assert len(set(sids)) == len(sids) == 1500
    assert len(set(cids)) == len(cids)
    assert all(re.fullmatch(r"SUBJ-\d{8}", s) for s in sids)
    assert all(re.fullmatch(r"CAP-\d{10}", c) for c in cids)
    assert sids != sorted(sids)
    numbers = np.array([int(s[5:]) for s in sids])
    assert np.abs(np.diff(numbers)).min() > 1 or len(set(np.diff(numbers))) > 10


def test_foreign_keys_and_captures_per_subject(data: DemoData) -> None:
    subjects = set(data.subjects["subject_id"].to_pylist())
    per = Counter(data.captures["subject_id"].to_pylist())
    assert set(per) == subjects  # every capture has a subject, every subject a capture
    mean = data.captures.num_rows / data.subjects.num_rows
    assert 2.7 < mean < 3.3
    assert data.notes_truth["capture_id"].equals(data.captures["capture_id"])
    assert data.notes_truth["subject_id"].equals(data.captures["subject_id"])


def _age(born: dt.date, on: dt.date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def test_ages_and_timestamps_are_consistent(data: DemoData) -> None:
    dob = dict(
        zip(
            data.subjects["subject_id"].to_pylist(),
            data.subjects["date_of_birth"].to_pylist(),
            strict=True,
        )
    )
    caps = data.captures.select(["subject_id", "capture_ts", "age"]).to_pylist()
    low = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
    high = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for row in caps:
        born = dob[row["subject_id"]]
        ts = row["capture_ts"]
        assert low <= ts < high
        assert row["age"] == _age(born, ts.date())
        assert 18 <= row["age"] <= 85
    for born in dob.values():
        assert 18 <= _age(born, dt.date(2025, 12, 31)) <= 85
    ts = data.captures["capture_ts"]
    assert pc.all(pc.greater_equal(ts[1:], ts[:-1])).as_py()  # exported in time order


# --- subject columns --------------------------------------------------------------------


def test_icao_check_digit_known_answer() -> None:
    # ICAO Doc 9303 specimen passport: document number L898902C3, check digit 6
    assert _icao_check("L898902C3") == 6
    assert _icao_check("<<<<<<<<") == 0
    with pytest.raises(ValueError):
        _icao_check("ab")


def test_passport_numbers_carry_valid_check_digits(data: DemoData) -> None:
    for p in data.subjects["passport_number"].to_pylist():
        assert re.fullmatch(r"[A-Z0-9]{8}[0-9]", p), p
        assert _icao_check(p[:8]) == int(p[8])


def test_emails_use_reserved_domains(data: DemoData) -> None:
    for e in data.subjects["email"].to_pylist():
        assert re.fullmatch(r"[a-z0-9._]+@[a-z0-9.-]+", e), e
        domain = e.split("@")[1]
        assert domain.endswith(".example") or re.search(r"(^|\.)example\.(com|org|net)$", domain)


def test_phones_match_nationality_mostly(data: DemoData) -> None:
    codes = {
        "GBR": "+44",
        "USA": "+1",
        "CAN": "+1",
        "DEU": "+49",
        "FRA": "+33",
        "ESP": "+34",
        "POL": "+48",
        "TUR": "+90",
        "IND": "+91",
        "CHN": "+86",
        "NGA": "+234",
        "ARM": "+374",
        "BRA": "+55",
        "PRT": "+351",
        "MEX": "+52",
        "EGY": "+20",
        "MAR": "+212",
        "VNM": "+84",
        "IRL": "+353",
        "AUT": "+43",
    }
    rows = data.subjects.select(["nationality", "phone"]).to_pylist()
    intl = [r for r in rows if r["phone"].startswith("+")]
    assert 0.75 < len(intl) / len(rows) < 0.95  # some numbers are in national format
    same = sum(r["phone"].startswith(codes[r["nationality"]] + " ") for r in intl)
    assert same / len(intl) > 0.8
    for r in rows:
        assert re.fullmatch(r"[+0-9 ()-]{8,22}", r["phone"]), r["phone"]


def test_demographics_look_realistic(data: DemoData) -> None:
    nat = Counter(data.subjects["nationality"].to_pylist())
    assert 15 <= len(nat) <= 20
    assert all(re.fullmatch(r"[A-Z]{3}", n) for n in nat)
    assert nat.most_common(1)[0][1] > 3 * nat.most_common()[-1][1]  # skewed
    gender = Counter(data.subjects["gender"].to_pylist())
    assert set(gender) <= {"F", "M", "X"}
    assert gender["X"] < gender["F"] and gender["X"] < gender["M"]
    names = data.subjects["full_name"].to_pylist()
    assert any(not n.isascii() for n in names)  # accents occur
    assert any(len(n.split()) == 3 for n in names)  # middle names occur
    assert all(len(n.split()) in (2, 3) for n in names)


def test_captures_columns(data: DemoData) -> None:
    c = data.captures
    assert set(c["modality"].to_pylist()) == {"face", "fingerprint", "iris"}
    assert all(re.fullmatch(r"DV-[0-9A-F]{4}-\d{5}", d) for d in c["device_serial"].to_pylist())
    q = c["quality_score"].to_numpy()
    assert q.min() >= 0 and q.max() <= 1
    lat, lon = c["gps_lat"].to_numpy(), c["gps_lon"].to_numpy()
    assert (np.abs(lat) <= 90).all() and (np.abs(lon) <= 180).all()


def test_templates_are_unit_norm_and_cluster_by_subject(data: DemoData) -> None:
    c = data.captures.slice(0, 600)
    t = c["template"].combine_chunks().flatten().to_numpy().reshape(len(c), 512)
    assert t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    sim = t @ t.T
    owner = np.array(c["subject_id"].to_pylist())
    same = owner[:, None] == owner[None, :]
    np.fill_diagonal(same, False)
    other = owner[:, None] != owner[None, :]
    assert sim[same].mean() > 0.7
    assert abs(sim[other].mean()) < 0.05


# --- operator notes and ground truth ----------------------------------------------------


def test_every_planted_pii_string_occurs_in_its_note(data: DemoData) -> None:
    notes = data.captures["operator_notes"].to_pylist()
    truth = data.notes_truth.to_pylist()
    for note, row in zip(notes, truth, strict=True):
        assert len(row["pii"]) == len(row["pii_kinds"])
        if note is None:
            assert row["pii"] == []
            continue
        for s, kind in zip(row["pii"], row["pii_kinds"], strict=True):
            assert kind in KINDS
            assert s in note, (s, note)


def test_notes_mix_kinds_nulls_and_pii_free_text(data: DemoData) -> None:
    notes = data.captures["operator_notes"].to_pylist()
    truth = data.notes_truth.to_pylist()
    n = len(notes)
    nulls = sum(x is None for x in notes)
    clean = sum(x is not None and not t["pii"] for x, t in zip(notes, truth, strict=True))
    assert 0.02 < nulls / n < 0.12
    assert 0.15 < clean / n < 0.35
    kinds = Counter(k for t in truth for k in t["pii_kinds"])
    assert set(kinds) == KINDS
    assert any("\n-- \n" in x for x in notes if x)  # signature blocks
    assert any(t.isupper() and len(t) > 2 for r in truth for t in r["pii"])  # "PETROSYAN"


def test_ground_truth_values_belong_to_the_subject_or_staff(data: DemoData) -> None:
    subj = {r["subject_id"]: r for r in data.subjects.to_pylist()}
    names = source_names()
    known = {fold(x) for x in names.given.to_pylist() + names.family.to_pylist()}
    for row in data.notes_truth.to_pylist():
        s = subj.get(row["subject_id"])
        for value, kind in zip(row["pii"], row["pii_kinds"], strict=True):
            if kind == "DOCUMENT_NUMBER":
                assert value == s["passport_number"]
            elif kind == "PERSON":
                assert len(value) >= 2 and fold(value) in known, value
            elif kind == "PHONE_NUMBER":
                digits = re.sub(r"\D", "", value)
                assert digits[-6:] == re.sub(r"\D", "", s["phone"])[-6:]
            elif kind == "EMAIL_ADDRESS":
                staff = value.split("@")[1] in {
                    "enrol.example",
                    "registry.example.org",
                    "ops.example.net",
                }
                assert staff or value == s["email"]


def test_note_text_never_contains_a_source_name_by_accident() -> None:
    """The non-PII words of the notes are no one's name, so ground truth is unambiguous."""
    names = source_names()
    known = {fold(x) for x in names.given.to_pylist() + names.family.to_pylist()}
    text = " ".join(FILLERS + SUBJECT_SENTENCES + STAFF_SENTENCES)
    text = re.sub(r"\{\w+\}", " ", text)
    words = {fold(w) for w in re.findall(r"[^\W\d_]+", text)}
    words |= {fold(m) for m in _MONTHS} | {fold(w) for f in _FINGERS for w in f.split()}
    words |= {fold(t) for titles in _TITLES.values() for t in titles}
    assert not words & known, sorted(words & known)


# --- name lists -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["given_names.txt", "family_names.txt"])
def test_pseudonym_pools_are_large_unique_ascii_title_case(name: str) -> None:
    values = pool(name)
    assert len(values) >= 800
    assert len(set(values)) == len(values)
    assert len({v.casefold() for v in values}) == len(values)
    for v in values:
        assert re.fullmatch(r"[A-Z][a-z]+", v), v


def test_pseudonym_pools_cover_many_locales() -> None:
    given, family = set(pool("given_names.txt")), set(pool("family_names.txt"))
    # a few markers per locale; each list is split between the pools and the demo sources
    for marker in [
        "Sandra",
        "Leonor",
        "Joaquim",
        "Hanan",
        "Chiamaka",
        "Anahit",
        "Tuyet",
        "Jiahui",
        "Shufen",
        "Szymon",
        "Bassam",
        "Motunrayo",
    ]:
        assert marker in given, marker
    for marker in [
        "Figueroa",
        "Heller",
        "Duval",
        "Karadeniz",
        "Hamdan",
        "Huang",
        "Srivastava",
        "Adeyemi",
        "Barseghyan",
        "Huynh",
        "Pinheiro",
        "Laszuk",
    ]:
        assert marker in family, marker


def test_demo_source_names_are_disjoint_from_pseudonym_pools() -> None:
    names = source_names()
    source = names.given.to_pylist() + names.family.to_pylist()
    pools = pool("given_names.txt") + pool("family_names.txt")
    assert not {s.casefold() for s in source} & {p.casefold() for p in pools}
    # stronger: a pseudonym never equals a source name with its accents dropped either
    assert not {fold(s) for s in source} & {fold(p) for p in pools}


def test_demo_source_names_cover_all_locales_and_accents() -> None:
    names = source_names()
    for loc in LOCALES:
        for sex in ("f", "m"):
            assert names.given_groups[(loc, sex)].size >= 10, (loc, sex)
            assert names.family_groups[(loc, sex)].size >= 5, (loc, sex)
    everything = names.given.to_pylist() + names.family.to_pylist()
    for accented in ["José", "Müller", "Łukasz", "Şahin", "Nguyễn"]:
        assert accented in everything
    for n in everything:
        assert n == unicodedata.normalize("NFC", n) and n.isalpha() and n[0].isupper(), n


# --- structured benchmark tables --------------------------------------------------------


def test_generate_structured_100k() -> None:
    t = generate_structured(100_000, seed=3)
    assert t.num_rows == 100_000
    assert t.schema == STRUCTURED_SCHEMA
    assert pc.count_distinct(t["subject_id"]).as_py() == 100_000
    assert pc.count_distinct(t["capture_id"]).as_py() == 100_000
    assert "operator_notes" not in t.schema.names and "template" not in t.schema.names
    sample = t.slice(0, 2000).to_pylist()
    for row in sample:
        assert row["age"] == _age(row["date_of_birth"], row["capture_ts"].date())
        assert _icao_check(row["passport_number"][:8]) == int(row["passport_number"][8])


def test_structured_batches_do_not_depend_on_batch_size() -> None:
    whole = generate_structured(70_000, seed=4)
    batches = list(iter_structured_batches(70_000, 30_000, seed=4))
    assert [b.num_rows for b in batches] == [30_000, 30_000, 10_000]
    assert pa.Table.from_batches(batches).equals(whole)
    assert ipc_bytes(generate_structured(70_000, seed=4)) == ipc_bytes(whole)
    assert list(iter_structured_batches(0)) == []
