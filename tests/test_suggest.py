"""`biomask policy suggest`: a commented draft that validates, from sampled rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.cli import main
from biomask.demo import DemoData
from biomask.errors import BiomaskError, ConnectorError
from biomask.policies import load_policy, parse_policy
from biomask.suggest import suggest_policy


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, demo: DemoData) -> Path:
    root = tmp_path_factory.mktemp("export")
    pq.write_table(demo.subjects, root / "subjects.parquet")
    pq.write_table(demo.captures, root / "captures.parquet")
    return root


def _rules(text: str, table: str | None = None) -> dict[str, dict[str, object]]:
    policy = parse_policy(text)
    spec = policy.table_specs()[table] if table else next(iter(policy.table_specs().values()))
    return {c: op.model_dump(exclude_defaults=True) for c, op in spec.columns.items()}


def test_two_table_export_gets_linked_domains_and_a_text_rule(export: Path) -> None:
    text = suggest_policy(str(export), sample=300)
    assert text.startswith("# Draft biomask policy")
    policy = parse_policy(text)
    assert policy.is_multi_table and policy.entities["subject"].column == "subject_id"
    subjects, captures = _rules(text, "subjects"), _rules(text, "captures")
    assert subjects["full_name"] == {"op": "pseudonym", "domain": "person"}
    assert subjects["email"] == {"op": "email", "domain": "email"}
    assert subjects["phone"] == {"op": "phone", "domain": "phone"}
    assert subjects["passport_number"] == {"op": "tokenize", "domain": "passport"}
    assert subjects["gender"] == {"op": "keep", "quasi_identifier": True}
    assert subjects["date_of_birth"] == {"op": "date_shift", "entity": "subject"}
    assert subjects["subject_id"] == captures["subject_id"]  # joins survive
    assert captures["operator_notes"] == {
        "op": "text",
        "entities": {
            "PERSON": "person",
            "EMAIL_ADDRESS": "email",
            "PHONE_NUMBER": "phone",
            "DOCUMENT_NUMBER": "passport",
        },
    }
    assert captures["age"] == {"op": "generalize", "bucket": 10.0, "quasi_identifier": True}
    assert captures["template"] == {"op": "encrypt", "entity": "subject", "row_key": "capture_id"}
    assert "PERSON x" in text  # Presidio looked at the notes


def test_cli_writes_a_draft_that_validates(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "draft.yaml"
    assert (
        main(
            [
                "policy",
                "suggest",
                "--input",
                str(export / "subjects.parquet"),
                "--sample",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    load_policy(out)
    assert main(["policy", "validate", str(out)]) == 0
    # a reviewed policy is never overwritten
    assert (
        main(["policy", "suggest", "--input", str(export / "subjects.parquet"), "--out", str(out)])
        == 1
    )
    assert "exists" in capsys.readouterr().err


def test_cli_prints_to_stdout(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["policy", "suggest", "--input", str(export / "subjects.parquet"), "--sample", "50"])
        == 0
    )
    parse_policy(capsys.readouterr().out)


def test_unsure_columns_are_redacted_with_a_review_comment(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    pq_table = pa.table(
        {
            "ref": [f"x{i}y" for i in range(60)],
            "city": ["Lyon", "Paris", "Lille"] * 20,
            "empty": pa.array([None] * 60, pa.string()),
            "score": [float(i) for i in range(60)],
        }
    )
    import pyarrow.csv as pcsv

    pcsv.write_csv(pq_table, path)
    text = suggest_policy(str(path), sample=60, scan_text=False)
    rules = _rules(text)
    assert rules["ref"] == {"op": "redact"} and rules["empty"] == {"op": "redact"}
    assert rules["city"] == {"op": "redact"}
    # 60 distinct integers in 60 rows (CSV reads 0.0 back as 0): maybe an id, never kept
    assert rules["score"] == {"op": "redact"} and "REVIEW: 60 distinct integers" in text
    assert text.count("REVIEW") >= 4


def test_missing_input_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConnectorError, match="not found"):
        suggest_policy(str(tmp_path / "nope.parquet"))
    assert main(["policy", "suggest", "--input", str(tmp_path / "nope.parquet")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("biomask: error: ") and err.count("\n") == 1


def test_bad_sample_size(export: Path) -> None:
    with pytest.raises(BiomaskError, match="at least 1"):
        suggest_policy(str(export), sample=0)
    assert main(["policy", "suggest", "--input", str(export), "--sample", "0"]) == 2
