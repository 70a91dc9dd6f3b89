"""Fixtures for connector tests: a real PostgreSQL schema per test, small Arrow tables."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pytest

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class PgSchema:
    """A throwaway schema on the test server."""

    base: str  # postgresql://postgres@127.0.0.1:5432/test
    schema: str

    def uri(self, table: str) -> str:
        return f"{self.base}?table={self.schema}.{table}"

    def execute(self, sql: str) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            cur = conn.execute(sql)
            return list(cur.fetchall()) if cur.description else []


@pytest.fixture
def pg() -> Iterator[PgSchema]:
    """A unique schema on 127.0.0.1:5432/test, dropped afterwards; skips if the server is
    unreachable (the connector tests must run against a real server, never a mock)."""
    try:
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432/test not reachable: {type(exc).__name__}")
    name = f"bm_test_{secrets.token_hex(4)}"
    s = PgSchema(PG_BASE, name)
    s.execute(f"CREATE SCHEMA {name}")
    try:
        yield s
    finally:
        s.execute(f"DROP SCHEMA {name} CASCADE")


def enrolment_table(n: int = 1000, *, seed: int = 0) -> pa.Table:
    """A small enrolment-like table with the types every format can hold."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return pa.table(
        {
            "subject_id": [f"SUBJ-{i + seed:06d}" for i in range(n)],
            "full_name": [None if i % 17 == 0 else f"Name {i} Ünïcødé" for i in range(n)],
            "age": pa.array([None if i % 13 == 0 else 18 + i % 70 for i in range(n)], pa.int64()),
            "score": [i / 7 for i in range(n)],
            "date_of_birth": [dt.date(1950, 1, 1) + dt.timedelta(days=i * 11) for i in range(n)],
            "capture_ts": pa.array(
                [base + dt.timedelta(seconds=i * 37) for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
            "consent": [i % 2 == 0 for i in range(n)],
        }
    )
