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


def _validate_event(event: dict[str, Any]) -> int:
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
    assert all(_validate_event(e) >= 2 for e in events)

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
        _validate_event(e)
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
