import json
from pathlib import Path

import pytest

from biomask.errors import PolicyError
from biomask.policies import load_policy, parse_policy, policy_from_dict, policy_json_schema
from biomask.policies.models import DateShiftOp, TokenizeOp

GOOD = """\
version: 1
dataset: enrolment
entities:
  subject: {column: subject_id}
columns:
  subject_id: {op: tokenize, domain: subject}
  full_name: {op: pseudonym, domain: person}
  dob: {op: date_shift, entity: subject, max_days: 100}
  notes: {op: text, entities: {PERSON: person}}
  gender: {op: keep, quasi_identifier: true}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


def test_good_policy(tmp_path: Path) -> None:
    pol = load_policy(write(tmp_path, GOOD))
    cols = pol.table_specs()["enrolment"].columns
    assert isinstance(cols["subject_id"], TokenizeOp)
    assert isinstance(cols["dob"], DateShiftOp) and cols["dob"].max_days == 100
    assert len(pol.sha256) == 64
    assert pol.line_of("columns", "dob") == 8


def test_example_policy_is_valid_and_shipped() -> None:
    root = Path(__file__).parents[2]
    example = root / "examples" / "enrolment-policy.yaml"
    shipped = root / "src" / "biomask" / "demo" / "enrolment-policy.yaml"
    assert example.read_text() == shipped.read_text()
    pol = load_policy(example)
    assert set(pol.table_specs()) == {"subjects", "captures"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            (
                "subject_id: {op: tokenize, domain: subject}",
                "subject_id: {op: tokenise, domain: subject}",
            ),
            r"policy.yaml:6: columns.subject_id: unknown operator 'tokenise' \(known: keep, drop",
        ),
        (
            ("max_days: 100", "max_days: 100, maxdays: 3"),
            r"policy.yaml:8: columns.dob.maxdays: unknown field 'maxdays'",
        ),
        (
            ("max_days: 100", "max_days: soon"),
            r"policy.yaml:8: columns.dob.max_days: Input should be a valid integer",
        ),
        (
            ("entity: subject, max_days", "entity: person, max_days"),
            r"policy.yaml:8: columns.dob.entity: unknown entity 'person' \(entities: subject\)",
        ),
        (
            ("{PERSON: person}", "{PERSON: people}"),
            r"policy.yaml:9: columns.notes.entities.PERSON: unknown domain 'people' for PERSON",
        ),
        (
            (
                "full_name: {op: pseudonym, domain: person}",
                "full_name: {op: pseudonym, domain: subject}",
            ),
            r"policy.yaml:7: columns.full_name.domain: domain 'subject' is used by 'tokenize'",
        ),
        (("version: 1", "version: 2"), r"policy.yaml:1: version: invalid value; expected 1"),
        (("dataset: enrolment\n", ""), r"policy.yaml:1: dataset: missing required field 'dataset'"),
        (
            ("gender: {op: keep, quasi_identifier: true}", "gender: {quasi_identifier: true}"),
            r"policy.yaml:10: columns.gender: missing 'op'",
        ),
        (
            (
                "subject_id: {op: tokenize, domain: subject}\n",
                "subject_id: {op: tokenize, domain: subject}\n  subject_id: {op: drop}\n",
            ),
            r"policy.yaml:7: columns.subject_id: duplicate key 'subject_id'",
        ),
        (("columns:", "columns: [\n"), r"policy.yaml:\d+: invalid YAML"),
    ],
)
def test_bad_policy_messages(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_entity_column_must_keep_identity(tmp_path: Path) -> None:
    text = GOOD.replace("subject_id: {op: tokenize, domain: subject}", "subject_id: {op: drop}")
    with pytest.raises(PolicyError, match="entity column 'subject_id' uses 'drop'"):
        load_policy(write(tmp_path, text))


def test_generalize_needs_one_mode() -> None:
    with pytest.raises(PolicyError, match="exactly one of: bucket, decimals, truncate"):
        parse_policy(
            "version: 1\ndataset: x\ncolumns:\n  a: {op: generalize, bucket: 5, decimals: 1}\n"
        )


def test_missing_file_and_empty(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot read policy file"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="policy file is empty"):
        load_policy(write(tmp_path, ""))
    with pytest.raises(PolicyError, match="a policy must be a mapping"):
        load_policy(write(tmp_path, "- 1\n"))


def test_columns_or_tables() -> None:
    with pytest.raises(PolicyError, match="exactly one of 'columns' or 'tables'"):
        parse_policy("version: 1\ndataset: x\n")


def test_policy_from_dict_and_schema() -> None:
    pol = policy_from_dict({"version": 1, "dataset": "x", "columns": {"a": {"op": "keep"}}})
    assert pol.table_specs()["x"].columns["a"].op == "keep"
    schema = policy_json_schema()
    json.dumps(schema)
    assert "columns" in schema["properties"]
    assert schema["$schema"].startswith("https://json-schema.org/")


# -- one offset range per entity (issue #21) ---------------------------------------------

RANGES = """\
version: 1
dataset: enrolment
entities:
  subject: {column: subject_id, max_days: 365}
columns:
  subject_id: {op: tokenize, domain: subject}
  dob: {op: date_shift, entity: subject}
  seen: {op: date_shift, entity: subject, max_days: 730}
"""


def test_a_rule_asking_for_another_range_than_its_entity_is_refused() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(RANGES, source="policy.yaml")
    assert str(err.value) == (
        "policy.yaml:8: columns.seen.max_days: max_days 730 differs from entity 'subject''s "
        "range (entities.subject.max_days: 365); every date of an entity moves by one "
        "offset: remove max_days here or change the entity's"
    )


def test_rules_of_one_entity_that_disagree_are_refused() -> None:
    text = RANGES.replace("max_days: 365", "").replace(
        "{column: subject_id, }", "{column: subject_id}"
    )
    text = text.replace(
        "dob: {op: date_shift, entity: subject}",
        "dob: {op: date_shift, entity: subject, max_days: 365}",
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(text, source="policy.yaml")
    assert str(err.value).startswith(
        "policy.yaml:8: columns.seen.max_days: max_days 730 differs from 365 at columns.dob; "
    )
    assert "set entities.subject.max_days once" in str(err.value)


def test_the_entity_owns_the_range_and_old_rules_migrate() -> None:
    same = parse_policy(RANGES.replace("max_days: 730", "max_days: 365"))
    assert same.entity_max_days("subject") == 365
    old = parse_policy(
        RANGES.replace("{column: subject_id, max_days: 365}", "{column: subject_id}")
    )
    assert old.entity_max_days("subject") == 730  # the rules' one value becomes the entity's
    bare = parse_policy(
        RANGES.replace("{column: subject_id, max_days: 365}", "{column: subject_id}").replace(
            ", max_days: 730", ""
        )
    )
    assert bare.entity_max_days("subject") == 365


def test_short_hash_refused_for_an_entity_or_a_text_domain() -> None:
    entity = (
        "version: 1\ndataset: d\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: hash, domain: subject, length: 16}\n"
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(entity, source="p.yaml")
    assert str(err.value) == (
        "p.yaml:6: columns.sid.length: hash of length 16 (64 bits) may merge two values "
        "of domain 'subject', and it keys entity 'subject': use length 32 or more (128 bits), "
        "or tokenize"
    )
    text = (
        "version: 1\ndataset: d\ncolumns:\n  dev: {op: hash, domain: device, length: 24}\n"
        "  notes: {op: text, entities: {ID: device}}\n"
    )
    with pytest.raises(PolicyError, match=r"the text rule at columns\.notes links ID to it"):
        parse_policy(text, source="p.yaml")
    # elsewhere a short hash is a choice the policy may make
    parse_policy(
        "version: 1\ndataset: d\ncolumns:\n  dev: {op: hash, domain: device, length: 16}\n"
    )
