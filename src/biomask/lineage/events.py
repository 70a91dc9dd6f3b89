"""OpenLineage RunEvents of a biomask run, built with openlineage-python's classes.

One START and one COMPLETE or FAIL per run, same ``runId``, appended as JSON Lines to
``openlineage.jsonl`` through the client's :class:`FileTransport` (so the serialization is
the client's own ``Serde``, and any OpenLineage consumer reads the file as-is).

Facets used: ``schema`` and ``version`` (SHA-256 of the data files) on datasets,
``columnLineage`` on outputs (masked columns ``DIRECT/TRANSFORMATION`` with
``masking: true``, kept columns ``DIRECT/IDENTITY``), ``errorMessage`` on FAIL, and the
custom ``biomask_masking`` run facet described by ``schemas/BiomaskMaskingRunFacet.json``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attr
import pyarrow as pa
from openlineage.client.event_v2 import (
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
)
from openlineage.client.facet_v2 import (
    RunFacet,
    column_lineage_dataset,
    dataset_version_dataset,
    error_message_run,
    schema_dataset,
)
from openlineage.client.transport.file import FileConfig, FileTransport

from biomask.errors import LineageError
from biomask.lineage._util import PRODUCER
from biomask.lineage.record import ColumnRecord, RunRecord
from biomask.types import DatasetRef

__all__ = [
    "FACET_NAME",
    "FACET_SCHEMA_URL",
    "JOB_NAMESPACE",
    "OPENLINEAGE_FILE",
    "BiomaskMaskingRunFacet",
    "build_event",
    "emit",
    "ol_run_id",
]

OPENLINEAGE_FILE = "openlineage.jsonl"
JOB_NAMESPACE = "biomask"
FACET_NAME = "biomask_masking"
FACET_SCHEMA_URL = (
    "https://biomask.dev/schemas/BiomaskMaskingRunFacet.json#/$defs/BiomaskMaskingRunFacet"
)


@attr.define
class BiomaskMaskingRunFacet(RunFacet):
    """Custom run facet: what the run did, in counts and ids (schema in ``schemas/``)."""

    command: str
    policySha256: str | None
    keyringId: str | None
    keyIds: list[str]
    signingKeyId: str | None
    rowsIn: int
    rowsOut: int
    rowsQuarantined: int
    quarantineReasons: dict[str, int]
    operatorCounts: dict[str, int]
    textDetections: dict[str, int]
    weakTokens: dict[str, int]

    _additional_skip_redact: ClassVar[list[str]] = ["command", "policySha256", "keyIds"]

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA_URL


def ol_run_id(run_id: str) -> str:
    """The OpenLineage runId: the record's id if it is a UUID, else a UUIDv5 of it.

    OpenLineage requires a UUID; the derivation keeps the mapping stable and visible.
    """
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"biomask:run:{run_id}"))


def _masking_facet(record: RunRecord) -> BiomaskMaskingRunFacet:
    return BiomaskMaskingRunFacet(
        command=record.command,
        policySha256=record.policy_sha256 or None,
        keyringId=record.keyring_id,
        keyIds=sorted(set(record.key_ids)),
        signingKeyId=record.signing_key_id,
        rowsIn=int(record.rows_in),
        rowsOut=int(record.rows_out),
        rowsQuarantined=int(record.rows_quarantined),
        quarantineReasons={str(k): int(v) for k, v in sorted(record.quarantine_reasons.items())},
        operatorCounts={str(k): int(v) for k, v in sorted(record.operator_counts.items())},
        textDetections={str(k): int(v) for k, v in sorted(record.text_detections.items())},
        weakTokens={str(k): int(v) for k, v in sorted(record.weak_tokens.items())},
        producer=PRODUCER,
    )


def _schema_fields(
    schema: pa.Schema | pa.StructType,
) -> list[schema_dataset.SchemaDatasetFacetFields]:
    fields = []
    for i, f in enumerate(schema, start=1):
        nested: list[schema_dataset.SchemaDatasetFacetFields] = []
        if pa.types.is_struct(f.type):
            nested = _schema_fields(f.type)
        fields.append(
            schema_dataset.SchemaDatasetFacetFields(
                name=f.name, type=str(f.type), ordinal_position=i, fields=nested
            )
        )
    return fields


def _dataset_facets(ref: DatasetRef, version: str | None) -> dict[str, Any]:
    facets: dict[str, Any] = {}
    if ref.schema is not None:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=_schema_fields(ref.schema), producer=PRODUCER
        )
    if version is not None:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=version, producer=PRODUCER
        )
    return facets


def _transformation(col: ColumnRecord) -> column_lineage_dataset.Transformation:
    if not col.masks:
        return column_lineage_dataset.Transformation(
            type="DIRECT", subtype="IDENTITY", description="kept unchanged", masking=False
        )
    what = f"biomask {col.op}"
    if col.domain:
        what += f" in domain {col.domain}"
    if col.entity:
        what += f" bound to entity {col.entity}"
    what += f" with key {col.key_id}" if col.key_id else " (no key)"
    return column_lineage_dataset.Transformation(
        type="DIRECT", subtype="TRANSFORMATION", description=what, masking=True
    )


def _column_lineage(
    out: DatasetRef, source: DatasetRef | None, columns: Iterable[ColumnRecord]
) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
    fields: dict[str, column_lineage_dataset.Fields] = {}
    for col in columns:
        if col.dropped or col.table != out.table:
            continue
        inputs = []
        if source is not None:
            inputs.append(
                column_lineage_dataset.InputField(
                    namespace=source.namespace,
                    name=source.name,
                    field=col.column,
                    transformations=[_transformation(col)],
                )
            )
        fields[col.column] = column_lineage_dataset.Fields(inputFields=inputs)
    if not fields:
        return None
    return column_lineage_dataset.ColumnLineageDatasetFacet(fields=fields, producer=PRODUCER)


def build_event(
    state: str,
    record: RunRecord,
    *,
    event_time: str,
    versions: Mapping[tuple[str, str], str] | None = None,
    error: tuple[str, str] | None = None,
) -> RunEvent:
    """One RunEvent for ``state`` (``START``, ``COMPLETE`` or ``FAIL``).

    Parameters
    ----------
    versions:
        ``(namespace, name) -> SHA-256`` of each dataset with files; becomes its
        ``version`` facet (COMPLETE only: at START the outputs do not exist yet).
    error:
        ``(message, stack trace)`` for the ``errorMessage`` facet of a FAIL event.
    """
    versions = versions or {}
    by_table = {ref.table: ref for ref in record.inputs}
    run_facets: dict[str, Any] = {FACET_NAME: _masking_facet(record)}
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error[0], programmingLanguage="PYTHON", stackTrace=error[1], producer=PRODUCER
        )
    inputs = [
        InputDataset(
            namespace=ref.namespace,
            name=ref.name,
            facets=_dataset_facets(ref, versions.get((ref.namespace, ref.name))),
        )
        for ref in record.inputs
    ]
    outputs = []
    for ref in [*record.outputs, *record.quarantine]:
        facets = _dataset_facets(ref, versions.get((ref.namespace, ref.name)))
        if ref in record.outputs:
            lineage = _column_lineage(ref, by_table.get(ref.table), record.columns)
            if lineage is not None:
                facets["columnLineage"] = lineage
        outputs.append(OutputDataset(namespace=ref.namespace, name=ref.name, facets=facets))
    return RunEvent(
        eventType=RunState[state],
        eventTime=event_time,
        run=Run(runId=ol_run_id(record.run_id), facets=run_facets),
        job=Job(namespace=JOB_NAMESPACE, name=record.job),
        inputs=inputs,
        outputs=outputs,
        producer=PRODUCER,
    )


def emit(directory: Path, event: RunEvent) -> None:
    """Append ``event`` to ``openlineage.jsonl`` with the client's FileTransport.

    The file is created first with mode 0600 (the transport would create it 0644).
    """
    from biomask.lineage._util import open_private

    path = directory / OPENLINEAGE_FILE
    if not path.exists():
        try:
            open_private(path, append=True).close()
        except OSError as exc:
            raise LineageError(f"cannot create {path}: {exc.strerror}") from None
    transport = FileTransport(
        FileConfig(log_file_path=str(directory / OPENLINEAGE_FILE), append=True)
    )
    try:
        transport.emit(event)
    except RuntimeError as exc:
        raise LineageError(f"cannot write OpenLineage event to {directory}: {exc}") from None
