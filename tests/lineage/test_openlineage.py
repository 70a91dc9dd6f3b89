"""OpenLineage events validate against the official schemas; the custom facet against its own."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from biomask.errors import SchemaError
from biomask.lineage._util import file_digest
from biomask.lineage.events import FACET_SCHEMA_URL
from tests.lineage.conftest import POLICY_DOC, MakeRun, read_events

SCHEMAS = Path(__file__).parent / "schemas"


def _registry() -> Registry:
    resources_ = []
    for p in sorted(SCHEMAS.glob("*.json")):
        doc = json.loads(p.read_text())
        resources_.append((doc["$id"], Resource.from_contents(doc)))
    custom = json.loads(
        resources.files("biomask.lineage")
        .joinpath("schemas/BiomaskMaskingRunFacet.json")
        .read_text()
    )
    resources_.append((custom["$id"], Resource.from_contents(custom)))
    return Registry().with_resources(resources_)


REGISTRY = _registry()


def _validate(instance: Any, url: str) -> None:
    validator = jsonschema.Draft202012Validator(
        {"$ref": url}, registry=REGISTRY, format_checker=jsonschema.FormatChecker()
    )
    validator.validate(instance)


def validate_event(event: dict[str, Any]) -> int:
    """Validate the event and every facet against its declared schema; count facets."""
    _validate(event, event["schemaURL"])
    facets: list[dict[str, Any]] = list(event["run"]["facets"].values())
    for ds in [*event.get("inputs", []), *event.get("outputs", [])]:
        facets += list(ds.get("facets", {}).values())
    for facet in facets:
        _validate(facet, facet["_schemaURL"])
    return len(facets)


def test_complete_run_events_validate(make_run: MakeRun) -> None:
    run = make_run()
    events = read_events(run.directory)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert len({e["run"]["runId"] for e in events}) == 1
    assert events[0]["run"]["runId"] == run.record.run_id
    assert all(validate_event(e) >= 2 for e in events)

    complete = events[1]
    (out,) = complete["outputs"]
    assert out["namespace"] == "file" and out["name"] == str(run.output_path.resolve())
    assert out["facets"]["version"]["datasetVersion"] == file_digest(run.output_path)[0]
    assert [f["name"] for f in out["facets"]["schema"]["fields"]][:2] == ["subject_id", "full_name"]
    lineage = out["facets"]["columnLineage"]["fields"]
    kept_columns = [c for c, r in POLICY_DOC["columns"].items() if r["op"] != "drop"]
    assert sorted(lineage) == sorted(kept_columns)
    t = lineage["full_name"]["inputFields"][0]["transformations"][0]
    assert t["type"] == "DIRECT" and t["subtype"] == "TRANSFORMATION" and t["masking"] is True
    assert "pseudonym" in t["description"] and run.keyring.primary_key_id in t["description"]
    g = lineage["gender"]["inputFields"][0]
    assert g["name"] == str(run.input_path.resolve()) and g["field"] == "gender"
    assert g["transformations"][0] == {
        "type": "DIRECT",
        "subtype": "IDENTITY",
        "description": "kept unchanged",
        "masking": False,
    }
    assert "internal_code" not in lineage


def test_custom_facet_against_its_schema(make_run: MakeRun) -> None:
    run = make_run(quarantine=2)
    facet = read_events(run.directory)[-1]["run"]["facets"]["biomask_masking"]
    assert facet["_schemaURL"] == FACET_SCHEMA_URL
    _validate(facet, FACET_SCHEMA_URL)
    assert facet["policySha256"] == run.record.policy_sha256
    assert facet["keyIds"] == sorted(run.keyring.key_ids)
    assert (facet["rowsIn"], facet["rowsOut"], facet["rowsQuarantined"]) == (24, 20, 4)
    assert facet["operatorCounts"]["tokenize"] == 2
    assert facet["textDetections"] == {"PERSON": 1}
    bad = dict(facet, rowsIn=-1)
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad, FACET_SCHEMA_URL)
    with pytest.raises(jsonschema.ValidationError):
        _validate(dict(facet, holdsValue="x"), FACET_SCHEMA_URL)


def _boom() -> None:
    raise SchemaError("column 'age' of table enrolment: expected an integer type")


def test_fail_event_has_error_message_and_frames_only(make_run: MakeRun) -> None:
    try:
        _boom()
    except SchemaError as exc:
        err = exc
    run = make_run(fail=err)
    events = read_events(run.directory)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    for e in events:
        validate_event(e)
    facet = events[1]["run"]["facets"]["errorMessage"]
    assert facet["message"] == str(err)
    assert facet["programmingLanguage"] == "PYTHON"
    lines = facet["stackTrace"].splitlines()
    assert lines[0] == "SchemaError"
    assert all(line.startswith("  at ") and line.count(":") >= 2 for line in lines[1:])
    assert any(line.endswith(":_boom") for line in lines)
    assert "raise" not in facet["stackTrace"]  # no source text
    head = json.loads((run.directory / "manifest.json").read_text())
    assert head["status"] == "failed" and head["current_run"] is None
    manifest = json.loads((run.directory / head["runs"][-1]["manifest"]).read_text())
    assert manifest["status"] == "failed" and manifest["run"]["error"] == str(err)


def test_foreign_error_message_is_withheld(make_run: MakeRun) -> None:
    err = ValueError("could not convert 'Zorbulon Quixmaster' to int")
    run = make_run(fail=err)
    text = (run.directory / "openlineage.jsonl").read_text()
    assert "Zorbulon" not in text
    facet = read_events(run.directory)[1]["run"]["facets"]["errorMessage"]
    assert facet["message"].startswith("ValueError (message withheld")


# -- real runs: column lineage is emitted by the pipeline, not by a hand-built record ---------


def _column_lineage_by_output(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert [e["eventType"] for e in events][-2:] == ["START", "COMPLETE"]
    for e in events:
        validate_event(e)
    return {
        o["name"]: o["facets"]["columnLineage"]["fields"]
        for o in events[-1]["outputs"]
        if "columnLineage" in o["facets"]
    }


def test_a_cli_run_emits_column_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from biomask.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    Path("p.yaml").write_text(
        "version: 1\ndataset: people\ncolumns:\n"
        "  subject_id: {op: tokenize, domain: subject}\n"
        "  email: {op: email, domain: email}\n"
        "  score: {op: keep}\n"
        "  secret: {op: drop}\n"
    )
    pq.write_table(
        pa.table(
            {
                "subject_id": ["S000001", "S000002"],
                "email": ["a@x.org", "b@y.org"],
                "score": [1, 2],
                "secret": ["x", "y"],
            }
        ),
        "in.parquet",
    )
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    args = ["--policy", "p.yaml", "--input", "in.parquet", "--keyring", "k.json"]
    assert main(["mask", *args, "--output", "out.parquet"]) == 0
    (fields,) = _column_lineage_by_output(read_events(Path("out.parquet.lineage"))).values()
    assert sorted(fields) == ["email", "score", "subject_id"]  # the dropped column has none
    (src,) = fields["email"]["inputFields"]
    assert (src["namespace"], src["name"], src["field"]) == (
        "file",
        str((tmp_path / "in.parquet").resolve()),
        "email",
    )
    t = src["transformations"][0]
    assert (t["type"], t["subtype"], t["masking"]) == ("DIRECT", "TRANSFORMATION", True)
    assert t["description"].startswith("biomask email in domain email with key ")
    keep = fields["score"]["inputFields"][0]["transformations"][0]
    assert (keep["subtype"], keep["masking"]) == ("IDENTITY", False)


def test_a_multi_table_api_run_maps_each_output_to_its_own_table(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from biomask.demo import generate
    from biomask.demo.run import demo_policy_text
    from biomask.keys import Keyring
    from biomask.lineage import export
    from biomask.pipeline import run_mask
    from biomask.policies import parse_policy

    data = generate(60, seed=5)
    (tmp_path / "in").mkdir()
    pq.write_table(data.subjects, tmp_path / "in" / "subjects.parquet")
    pq.write_table(data.captures, tmp_path / "in" / "captures.parquet")
    run_mask(
        parse_policy(demo_policy_text()),
        Keyring.ephemeral(),
        str(tmp_path / "in"),
        str(tmp_path / "out"),
    )
    lineage = tmp_path / "out.lineage"
    by_output = _column_lineage_by_output(read_events(lineage))
    assert {Path(n).name for n in by_output} == {"subjects.parquet", "captures.parquet"}
    for name, fields in by_output.items():
        table = Path(name).stem
        cols = pq.read_schema(tmp_path / "out" / f"{table}.parquet").names
        assert sorted(fields) == sorted(cols)
        for col, f in fields.items():
            (src,) = f["inputFields"]
            assert Path(src["name"]).name == f"{table}.parquet" and src["field"] == col
    # PROV: each output derives from its own table's input only
    prov = json.loads(export(lineage, "prov", tmp_path / "prov.json").read_text())
    derived = prov["wasDerivedFrom"].values()
    pairs = {
        (Path(prov["entity"][d["prov:generatedEntity"]]["prov:label"]).name,
         Path(prov["entity"][d["prov:usedEntity"]]["prov:label"]).name)
        for d in derived
    }  # fmt: skip
    outs = {o for o, _ in pairs}
    assert all(o == i or o.replace(".quarantine", "") == i for o, i in pairs), pairs
    assert {"subjects.parquet", "captures.parquet"} <= outs


@pytest.mark.postgres
def test_a_postgresql_run_emits_column_lineage(tmp_path: Path) -> None:
    import pyarrow as pa

    from biomask.connectors import open_sink
    from biomask.keys import Keyring
    from biomask.pipeline import run_mask
    from biomask.policies import parse_policy

    pytest.importorskip("psycopg")
    import psycopg

    from tests.connectors.conftest import PG_BASE, PgSchema

    try:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
        ) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable: {type(exc).__name__}")
    import secrets

    pg = PgSchema(PG_BASE, f"bm_ol_{secrets.token_hex(4)}")
    pg.execute(f"CREATE SCHEMA {pg.schema}")
    try:
        table = pa.table({"subject_id": ["S000001", "S000002", "S000003"], "score": [1, 2, 3]})
        sink = open_sink(pg.uri("src"), table.schema)
        sink.write(table.to_batches()[0])
        sink.commit()
        policy = parse_policy(
            "version: 1\ndataset: pgpeople\ncolumns:\n"
            "  subject_id: {op: tokenize, domain: subject}\n  score: {op: keep}\n"
        )
        run_mask(
            policy,
            Keyring.ephemeral(),
            pg.uri("src"),
            pg.uri("dst"),
            lineage_dir=tmp_path / "pg.lineage",
        )
        by_output = _column_lineage_by_output(read_events(tmp_path / "pg.lineage"))
        (name,) = by_output
        assert name.endswith(f"{pg.schema}.dst")
        (src,) = by_output[name]["subject_id"]["inputFields"]
        assert src["namespace"] == "postgres://127.0.0.1:5432"
        assert src["name"].endswith(f"{pg.schema}.src") and src["field"] == "subject_id"
    finally:
        pg.execute(f"DROP SCHEMA {pg.schema} CASCADE")
