"""The text operator: PII in notes is replaced with exactly the columns' tokens."""

from __future__ import annotations

import io
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomask.connectors.files import StdinJsonlSource
from biomask.demo import DemoData
from biomask.errors import PolicyError
from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.operators.names import FAMILY, GIVEN, normalize_name, split_name
from biomask.masking.operators.tokens import phone_parts
from biomask.masking.text import Lexicon
from biomask.masking.text.quality import measure
from biomask.policies import Policy, policy_from_dict

from .conftest import Bound, MemorySource, prepared


def _occurs(needle: str, hay: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", hay) is not None


def _mask_table(bound: Bound, table: pa.Table, name: str) -> pa.Table:
    m = bound.maskers[name]
    res = m.mask_batch(table.combine_chunks().to_batches()[0])
    assert res.quarantine is None
    return pa.Table.from_batches([res.output])


# -- acceptance ------------------------------------------------------------------------


def test_pii_survival_at_most_one_percent(
    demo: DemoData, masked_notes: tuple[list[str | None], dict[str, int]]
) -> None:
    masked, _ = masked_notes
    truth = demo.notes_truth
    q = measure(
        demo.captures["operator_notes"].to_pylist(),
        masked,
        truth["pii"].to_pylist(),
        truth["pii_kinds"].to_pylist(),
    )
    assert q.pii > 1000  # a few hundred notes, every kind present
    assert set(q.pii_by_kind) == {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "DOCUMENT_NUMBER"}
    assert q.survival <= 0.01, (q.summary(), q.survivors[:10])
    assert q.changed <= 0.02, q.summary()


def test_every_name_reads_as_the_full_name_column_gives_it(
    bound: Bound, demo: DemoData, masked_notes: tuple[list[str | None], dict[str, int]]
) -> None:
    masked, _ = masked_notes
    subjects = _mask_table(bound, demo.subjects, "subjects")
    before = dict(
        zip(
            demo.subjects["subject_id"].to_pylist(),
            demo.subjects["full_name"].to_pylist(),
            strict=True,
        )
    )
    after_by_row = subjects["full_name"].to_pylist()
    after = dict(zip(demo.subjects["subject_id"].to_pylist(), after_by_row, strict=True))
    truth = demo.notes_truth
    checked = initials = 0
    for note, out, sid, strings, kinds in zip(
        demo.captures["operator_notes"].to_pylist(),
        masked,
        truth["subject_id"].to_pylist(),
        truth["pii"].to_pylist(),
        truth["pii_kinds"].to_pylist(),
        strict=True,
    ):
        if note is None:
            continue
        orig, pseudo = before[sid], after[sid]
        o_parts = [(orig[a:b], r) for a, b, r in split_name(orig)]
        p_parts = [pseudo[a:b] for a, b, _ in split_name(pseudo)]
        assert len(o_parts) == len(p_parts)
        lookup = {normalize_name(w): (p, r) for (w, r), p in zip(o_parts, p_parts, strict=True)}
        for s, k in zip(strings, kinds, strict=True):
            if k != "PERSON" or normalize_name(s) not in lookup:
                continue  # a staff member, not the subject
            p, _ = lookup[normalize_name(s)]
            want = p.upper() if s.isupper() and len(s) > 1 else p.lower() if s.islower() else p
            assert _occurs(want, out), (s, want, note, out)
            checked += 1
        # "I. Family": the initial of the given-name pseudonym
        given = [(w, p) for (w, r), p in zip(o_parts, p_parts, strict=True) if r == GIVEN]
        family = [(w, p) for (w, r), p in zip(o_parts, p_parts, strict=True) if r == FAMILY]
        if given and family:
            shape = f"{given[0][0][0]}. {family[-1][0]}"
            if _occurs(shape, note):
                assert f"{given[0][1][0]}. {family[-1][1]}" in out, (note, out)
                initials += 1
    assert checked > 300 and initials > 10


def test_emails_phones_documents_equal_the_column_tokens(
    bound: Bound, demo: DemoData, masked_notes: tuple[list[str | None], dict[str, int]]
) -> None:
    masked, _ = masked_notes
    subjects = _mask_table(bound, demo.subjects, "subjects")
    cols = ("email", "phone", "passport_number")
    orig = {
        c: dict(
            zip(demo.subjects["subject_id"].to_pylist(), demo.subjects[c].to_pylist(), strict=True)
        )
        for c in cols
    }
    tok = {
        c: dict(zip(demo.subjects["subject_id"].to_pylist(), subjects[c].to_pylist(), strict=True))
        for c in cols
    }
    seen = {c: 0 for c in cols}
    cross_format = 0
    truth = demo.notes_truth
    for out, sid, strings, kinds in zip(
        masked,
        truth["subject_id"].to_pylist(),
        truth["pii"].to_pylist(),
        truth["pii_kinds"].to_pylist(),
        strict=True,
    ):
        for s, k in zip(strings, kinds, strict=True):
            for c, kind in (
                ("email", "EMAIL_ADDRESS"),
                ("phone", "PHONE_NUMBER"),
                ("passport_number", "DOCUMENT_NUMBER"),
            ):
                if k != kind:
                    continue
                if s == orig[c][sid]:
                    assert tok[c][sid] in out, (s, tok[c][sid], out)
                    seen[c] += 1
                elif kind == "PHONE_NUMBER":
                    # the same number in another format: the same national digits
                    keep, nsn = phone_parts(orig[c][sid])  # type: ignore[misc]
                    if phone_parts(s) is not None and phone_parts(s)[1] == nsn:  # type: ignore[index]
                        want = "".join(ch for ch in tok[c][sid][keep:] if ch.isdigit())
                        digits = "".join(ch for ch in out if ch.isdigit())
                        assert want in digits, (s, out)
                        cross_format += 1
    assert min(seen.values()) > 20 and cross_format > 10


def test_detections_are_counted_per_row_and_type(bound: Bound) -> None:
    note = "Spoke with Isabel Petrosyan; mail isabel.p@example.org, call +44 20 7946 0958."
    out, stats = bound.column(pa.array([note, note, None, "All ten fingers captured."]))
    assert stats["text:PERSON"] == 2
    assert stats["text:EMAIL_ADDRESS"] == 2
    assert stats["text:PHONE_NUMBER"] == 2
    values = out.to_pylist()
    assert values[0] == values[1] != note
    assert values[2] is None and values[3] == "All ten fingers captured."


def test_column_type_is_kept(bound: Bound) -> None:
    values = pa.array(["Call +44 20 7946 0958.", None], pa.large_string())
    out, _ = bound.column(values)
    assert out.type == pa.large_string() and "7946" not in out[0].as_py()
    empty, _ = bound.column(pa.array([], pa.string()))
    assert len(empty) == 0


# -- name variants and the lexicon -------------------------------------------------------


def _one_person_policy(**text: Any) -> Policy:
    return policy_from_dict(
        {
            "version": 1,
            "dataset": "people",
            "tables": {
                "people": {
                    "columns": {
                        "full_name": {"op": "pseudonym", "domain": "person"},
                        "email": {"op": "email", "domain": "email"},
                    }
                },
                "notes": {
                    "columns": {
                        "note": {
                            "op": "text",
                            "entities": {"PERSON": "person", "EMAIL_ADDRESS": "email"},
                            **text,
                        },
                    }
                },
            },
        }
    )


def _run_notes(
    policy: Policy, ring: Keyring, people: pa.Table, notes: list[str | None], prepare: bool = True
) -> tuple[list[str | None], pa.Table]:
    sources = {
        "people": MemorySource(people, "people"),
        "notes": MemorySource(pa.table({"note": pa.array(notes, pa.string())}), "notes"),
    }
    maskers, _ = prepared(policy, ring, sources, prepare=prepare)
    masked_people = pa.Table.from_batches(
        [maskers["people"].mask_batch(people.to_batches()[0]).output]
    )
    res = maskers["notes"].mask_batch(
        pa.record_batch([pa.array(notes, pa.string())], names=["note"])
    )
    return res.output.column(0).to_pylist(), masked_people


def test_name_variants_map_to_one_pseudonym_in_their_shape(text_ring: Keyring) -> None:
    people = pa.table({"full_name": ["Isabel Petrosyan"], "email": ["isabel.p@example.org"]})
    notes = [
        "Isabel Petrosyan presented her passport.",
        "PETROSYAN, Isabel was nervous.",
        "Spoke with Ms Petrosyan about the low quality score.",
        "I. Petrosyan could not be reached.",
        "Handed over to petrosyan isabel for the iris capture.",
        "ISABEL PETROSYAN wore glasses.",
        "Checked by Petrosyan.",
    ]
    out, masked = _run_notes(_one_person_policy(), text_ring, people, notes)
    g, f = masked["full_name"][0].as_py().split()
    assert out == [
        f"{g} {f} presented her passport.",
        f"{f.upper()}, {g} was nervous.",
        f"Spoke with Ms {f} about the low quality score.",
        f"{g[0]}. {f} could not be reached.",
        f"Handed over to {f.lower()} {g.lower()} for the iris capture.",
        f"{g.upper()} {f.upper()} wore glasses.",
        f"Checked by {f}.",
    ]


def test_lexicon_finds_names_in_any_case_and_order(
    text_ring: Keyring,
) -> None:
    people = pa.table({"full_name": ["Anna Maria Lee"], "email": ["a.lee@example.org"]})
    notes = ["handed to lee anna for the capture; anna was late"]
    out, masked = _run_notes(_one_person_policy(), text_ring, people, notes)
    g, _middle, f = masked["full_name"][0].as_py().split()
    # whole words: a pseudonym may contain the original as a substring ("Lianna")
    assert out[0] is not None and not {"anna", "lee"} & set(re.findall(r"\w+", out[0].lower()))
    assert f"{f.lower()} {g.lower()}" in out[0]


def test_email_in_a_signature_and_the_name_above_it(text_ring: Keyring) -> None:
    people = pa.table({"full_name": ["Nobody Known"], "email": ["x@example.org"]})
    note = "All ten fingers captured.\n-- \nLope Ródenas\nlope.rodenas@enrol.example"
    out, _ = _run_notes(_one_person_policy(), text_ring, people, [note])
    assert out[0] is not None
    assert "Lope" not in out[0] and "Ródenas" not in out[0] and "lope.rodenas" not in out[0]
    assert out[0].startswith("All ten fingers captured.\n-- \n")
    assert re.search(r"\n[\w.]+@enrol\.example$", out[0])


@pytest.mark.parametrize(("unlinked", "tag"), [("tag", "<CREDIT_CARD>"), ("redact", "***")])
def test_unlinked_types_are_tagged_or_redacted(text_ring: Keyring, unlinked: str, tag: str) -> None:
    policy = policy_from_dict(
        {
            "version": 1,
            "dataset": "d",
            "columns": {"note": {"op": "text", "entities": {}, "unlinked": unlinked}},
        }
    )
    m = Masker(policy, text_ring)
    note = "Paid with 4111 1111 1111 1111; Ms Petrosyan emailed ops@enrol.example."
    out = m.mask_batch(pa.record_batch([pa.array([note])], names=["note"])).output
    value = out.column(0)[0].as_py()
    assert tag in value and "4111" not in value
    assert "Petrosyan" not in value and "ops@enrol.example" not in value


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    local=st.from_regex(r"[a-z]{2,8}\.[a-z]{2,8}[0-9]{0,2}", fullmatch=True),
    domain=st.sampled_from(["example.com", "mail.example", "enrol.example", "corp.example.org"]),
    filler=st.sampled_from(["Lighting poor at booth 3.", "Sensor cleaned.", "Queue was long."]),
)
def test_any_email_never_survives(bound: Bound, local: str, domain: str, filler: str) -> None:
    email = f"{local}@{domain}"
    out, _ = bound.column(pa.array([f"{filler} Receipt to {email} please. {filler}"]))
    value = out[0].as_py()
    assert email not in value and value.startswith(filler)


# -- determinism -----------------------------------------------------------------------


def test_process_pool_gives_identical_results(bound: Bound, demo: DemoData) -> None:
    op = bound.op()
    notes = [n for n in demo.captures["operator_notes"].to_pylist() if n]
    single, _ = op.mask_texts(notes)
    op.workers, op.pool_min = 2, 0
    try:
        pooled, _ = op.mask_texts(notes)
    finally:
        op.workers, op.pool_min = 1, 1 << 30
    assert pooled == single


def test_same_note_same_output_in_any_batch(bound: Bound) -> None:
    note = "Please call Selma Abdellaoui back on +49 30 538477 about the recapture."
    a, _ = bound.column(pa.array([note]))
    b, _ = bound.column(pa.array(["Sensor cleaned.", note, "x"]))
    assert a[0].as_py() == b[1].as_py()


# -- the pre-pass ------------------------------------------------------------------------


def test_lexicon_holds_no_plaintext(bound: Bound, demo: DemoData) -> None:
    lex: Lexicon = bound.op().lexicon
    assert lex.prepared and len(lex) > 400
    dump = repr(vars(lex))
    for name in demo.subjects["full_name"].to_pylist()[:50]:
        for part in name.split():
            assert part not in dump and part.lower() not in dump
    for email in demo.subjects["email"].to_pylist()[:50]:
        assert email not in dump
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(lex)


def test_prepass_skips_a_source_that_cannot_be_read_twice(
    policy: Policy, text_ring: Keyring, demo: DemoData
) -> None:
    jsonl = b'{"subject_id": "SUBJ-1", "full_name": "Ana Lee"}\n'
    sources = {
        "subjects": StdinJsonlSource(stream=io.BytesIO(jsonl)),
        "captures": MemorySource(demo.captures, "captures"),
    }
    maskers, services = prepared(policy, text_ring, sources)
    assert services.unreadable == {"subjects"} and "subjects" not in services.preread
    lex = maskers["captures"].operators["operator_notes"].lexicon
    assert lex.prepared and lex.skipped == ["subjects"] and len(lex) == 0


def test_run_mask_links_notes_to_the_subjects_table(
    tmp_path: Any, policy: Policy, text_ring: Keyring, demo: DemoData
) -> None:
    from biomask.pipeline import run_mask

    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(demo.subjects, src / "subjects.parquet")
    pq.write_table(demo.captures.slice(0, 120), src / "captures.parquet")
    summary = run_mask(policy, text_ring, str(src), str(tmp_path / "out"), batch_size=50)
    assert summary.stats["text:PERSON"] > 50
    subjects = pq.read_table(tmp_path / "out" / "subjects.parquet")
    notes = pq.read_table(tmp_path / "out" / "captures.parquet")["operator_notes"].to_pylist()
    pseudo = dict(
        zip(demo.subjects["full_name"].to_pylist(), subjects["full_name"].to_pylist(), strict=True)
    )
    hits = 0
    for orig, out in zip(demo.captures["operator_notes"].to_pylist()[:120], notes, strict=True):
        for name, fake in pseudo.items():
            if orig and name in orig:
                assert fake in out and name not in out
                hits += 1
    assert hits > 10
    (run_manifest,) = summary.lineage_dir.glob("runs/*/manifest.json")
    manifest = run_manifest.read_text()
    assert "PERSON" in manifest and not any(n in manifest for n in pseudo)


# -- bad input ---------------------------------------------------------------------------


def _text_policy(**extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "dataset": "d",
        "columns": {
            "note": {"op": "text", "entities": {"PERSON": "person"}},
            "name": {"op": "pseudonym", "domain": "person"},
        },
        **extra,
    }


def test_missing_model_is_one_clear_policy_error(text_ring: Keyring) -> None:
    policy = policy_from_dict(_text_policy(nlp={"model": "xx_no_such_model_sm"}))
    with pytest.raises(PolicyError) as err:
        Masker(policy, text_ring)
    msg = str(err.value)
    assert "xx_no_such_model_sm" in msg and "pip install" in msg and "nlp.model" in msg


def test_wrong_language_is_a_policy_error(text_ring: Keyring) -> None:
    policy = policy_from_dict(_text_policy(nlp={"language": "de"}))
    with pytest.raises(PolicyError, match="language 'en', not 'de'"):
        Masker(policy, text_ring)


def test_unknown_entity_type_is_a_policy_error(text_ring: Keyring) -> None:
    doc = _text_policy()
    doc["columns"]["note"]["entities"] = {"SHOE_SIZE": "person"}
    with pytest.raises(PolicyError, match="SHOE_SIZE"):
        Masker(policy_from_dict(doc), text_ring)


def test_text_on_a_number_column_is_refused(text_ring: Keyring) -> None:
    m = Masker(policy_from_dict(_text_policy()), text_ring)
    batch = pa.record_batch([pa.array([1, 2]), pa.array(["a", "b"])], names=["note", "name"])
    with pytest.raises(PolicyError, match="text takes string columns"):
        m.mask_batch(batch)


def test_masker_without_prepass_uses_ner_and_patterns(text_ring: Keyring) -> None:
    m = Masker(policy_from_dict(_text_policy()), text_ring)
    batch = pa.record_batch(
        [pa.array(["Checked by Somtochukwu Olaiya, +44 20 7946 0958."]), pa.array(["A B"])],
        names=["note", "name"],
    )
    ctx_out = m.mask_batch(batch)
    value = ctx_out.output.column(0)[0].as_py()
    assert "Olaiya" not in value and "7946 0958" not in value
    assert ctx_out.stats["text:PERSON"] == 1


def test_in_memory_mask_runs_the_lexicon_pre_pass(text_ring: Keyring) -> None:
    import polars as pl

    from biomask import mask

    policy = policy_from_dict(
        {
            "version": 1,
            "dataset": "people",
            "columns": {
                "full_name": {"op": "pseudonym", "domain": "person"},
                "note": {"op": "text", "entities": {"PERSON": "person"}},
            },
        }
    )
    # lower case, reversed order: found by the lexicon, not by the NER model
    df = pl.DataFrame(
        {
            "full_name": ["Anna Maria Lee", "Isabel Petrosyan"],
            "note": ["handed to lee anna for the capture", "petrosyan isabel was late"],
        }
    )
    out = mask(df, policy, text_ring)
    for (g, *_, f), note in zip(
        (n.split() for n in out["full_name"].to_list()), out["note"].to_list(), strict=True
    ):
        assert f"{f.lower()} {g.lower()}" in note
    words = set(re.findall(r"\w+", " ".join(out["note"].to_list()).lower()))
    assert not {"lee", "anna", "petrosyan"} & words  # whole words: "Lianna" may be a pseudonym
