"""Shared fixtures: hand-built RunRecords over small temp files (no pipeline needed)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.connectors.base import DatasetRef
from biomask.keys import Keyring
from biomask.lineage import ColumnRecord, LineageRecorder, RunRecord
from biomask.policies import Policy, policy_from_dict

# Distinctive values that must never reach a lineage file.
SENTINELS = {
    "subject_id": "SUBJ-907313",
    "full_name": "Zorbulon Quixmaster",
    "email": "zorbulon.quixmaster@sentinel-mail.example",
    "passport_number": "QX7731409",
    "notes": "called Zorbulon Quixmaster about QX7731409",
    "internal_code": "INTERNAL-SECRET-4242",
}

POLICY_DOC: dict[str, Any] = {
    "version": 1,
    "dataset": "enrolment",
    "entities": {"subject": {"column": "subject_id"}},
    "columns": {
        "subject_id": {"op": "tokenize", "domain": "subject"},
        "full_name": {"op": "pseudonym", "domain": "person"},
        "email": {"op": "email", "domain": "email"},
        "passport_number": {"op": "tokenize", "domain": "passport"},
        "age": {"op": "generalize", "bucket": 10, "quasi_identifier": True},
        "gender": {"op": "keep", "quasi_identifier": True},
        "nationality": {"op": "keep", "quasi_identifier": True},
        "notes": {"op": "text", "entities": {"PERSON": "person"}},
        "internal_code": {"op": "drop"},
    },
}


def input_batch(n: int = 12) -> pa.RecordBatch:
    """n rows; row 0 carries the sentinels."""
    genders = ["F", "M", "F", "X"]
    nats = ["FR", "DE", "FR", "NL", "PT"]
    rows: dict[str, list[Any]] = {
        "subject_id": [f"SUBJ-{100000 + i}" for i in range(n)],
        "full_name": [f"Person Number{i}" for i in range(n)],
        "email": [f"person{i}@example.org" for i in range(n)],
        "passport_number": [f"PA{1000000 + i}" for i in range(n)],
        "age": [20 + (i * 7) % 50 for i in range(n)],
        "gender": [genders[i % 4] for i in range(n)],
        "nationality": [nats[i % 5] for i in range(n)],
        "notes": [f"visit {i} ok" for i in range(n)],
        "internal_code": [f"IC-{i}" for i in range(n)],
    }
    for k, v in SENTINELS.items():
        rows[k][0] = v
    return pa.RecordBatch.from_pydict(rows)


def output_batch(inp: pa.RecordBatch, *, quarantine: int = 0, leak: bool = False) -> pa.RecordBatch:
    """A stand-in for the Masker's output: tokens, no dropped column, ages bucketed."""
    n = inp.num_rows - quarantine
    d = inp.slice(quarantine, n).to_pydict()
    out = {
        "subject_id": [f"SUBJ-{900000 + i}" for i in range(n)],
        "full_name": [f"Pseudo Name{i}" for i in range(n)],
        "email": [f"tok{i}@example.org" for i in range(n)],
        "passport_number": [f"PB{2000000 + i}" for i in range(n)],
        "age": [a // 10 * 10 for a in d["age"]],
        "gender": d["gender"],
        "nationality": d["nationality"],
        "notes": [f"visit {i} ok" for i in range(n)],
    }
    if leak:  # a masking bug: a real name survives inside the free text
        out["notes"][0] = f"called {SENTINELS['full_name']} again"
    return pa.RecordBatch.from_pydict(out)


@dataclass
class Run:
    directory: Path
    keyring: Keyring
    record: RunRecord
    recorder: LineageRecorder
    input_path: Path
    output_path: Path


def _ref(path: Path, table: str, schema: pa.Schema) -> DatasetRef:
    return DatasetRef(
        uri=str(path),
        namespace="file",
        name=str(path.resolve()),
        files=(path,),
        table=table,
        schema=schema,
    )


@pytest.fixture
def policy() -> Policy:
    return policy_from_dict(POLICY_DOC)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.ephemeral()


MakeRun = Callable[..., Run]


@pytest.fixture
def make_run(tmp_path: Path, policy: Policy, keyring: Keyring) -> MakeRun:
    """Write input/output parquet files and record a run over them."""

    def make(
        *,
        lineage: str = "out.lineage",
        fail: BaseException | None = None,
        quarantine: int = 0,
        leak: bool = False,
        command: str = "mask",
        ring: Keyring | None = None,
        batches: int = 2,
        base: Path | None = None,
    ) -> Run:
        root = base or tmp_path
        root.mkdir(parents=True, exist_ok=True)
        ring = ring or keyring
        table = policy.dataset
        inp = input_batch()
        out = output_batch(inp, quarantine=quarantine, leak=leak)
        in_path, out_path = root / "in.parquet", root / "out.parquet"
        pq.write_table(pa.Table.from_batches([inp] * batches), in_path)
        record = RunRecord(
            run_id=str(uuid.uuid4()),
            command=command,
            job=table,
            policy_path="policy.yaml",
            policy_sha256=policy.sha256,
            keyring_id=ring.keyring_id,
            key_ids=ring.key_ids,
            signing_key_id=ring.signing_key_id,
            inputs=[_ref(in_path, table, inp.schema)],
        )
        for name, rule in (policy.columns or {}).items():
            record.columns.append(
                ColumnRecord(
                    table=table,
                    column=name,
                    op=rule.op,
                    masks=rule.masks,
                    key_id=None
                    if rule.op in ("keep", "drop", "generalize")
                    else ring.primary_key_id,
                    domain=rule.domain_name,
                    entity=getattr(rule, "entity", None),
                    dropped=rule.op == "drop",
                )
            )
            record.operator_counts[rule.op] = record.operator_counts.get(rule.op, 0) + 1
        directory = root / lineage
        rec = LineageRecorder(directory, ring, record, policy=policy)
        rec.start()
        for _ in range(batches):
            rec.observe_input(table, inp)
            rec.observe_output(table, out)
            record.rows_in += inp.num_rows
            record.rows_out += out.num_rows
            record.rows_quarantined += quarantine
        if quarantine:
            record.quarantine_reasons["age: not a number"] = quarantine * batches
        if fail is not None:
            record.ended_at = "2026-01-01T00:00:00.000+00:00"
            rec.fail(fail)
        else:
            pq.write_table(pa.Table.from_batches([out] * batches), out_path)
            record.outputs = [_ref(out_path, table, out.schema)]
            record.text_detections = {"PERSON": 1}
            rec.complete()
        return Run(directory, ring, record, rec, in_path, out_path)

    return make


def read_events(directory: Path) -> list[dict[str, Any]]:
    lines = (directory / "openlineage.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run_manifest(directory: Path, index: int = -1) -> dict[str, Any]:
    """A run's own manifest (``runs/<id>/manifest.json``), the last run's by default."""
    head = json.loads((directory / "manifest.json").read_text())
    return dict(json.loads((directory / head["runs"][index]["manifest"]).read_text()))


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: 'byte-identical' made checkable."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
