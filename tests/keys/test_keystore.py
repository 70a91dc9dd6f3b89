"""Key stores: SQLite by default, PostgreSQL shared by concurrent maskers."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from biomask.keys import Keyring
from biomask.keys.keystore import SqliteKeyStore, open_keystore
from biomask.masking import Masker
from biomask.policies import parse_policy

PG = "postgresql://postgres@127.0.0.1:5432/test"


def pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=3).close()
        return True
    except Exception:
        return False


def test_sqlite_store_basics(tmp_path: Path) -> None:
    s = SqliteKeyStore(str(tmp_path / "ks.sqlite"))
    made: list[list[str]] = []

    def make(ids: list[str]) -> list[tuple[str, str, bytes]]:
        made.append(ids)
        return [(d, "k1", d.encode()) for d in ids]

    assert s.get_or_create(["a", "b"], make) == {"a": ("k1", b"a"), "b": ("k1", b"b")}
    # existing rows win; make is asked only for the missing id
    assert s.get_or_create(["a", "c"], make)["a"] == ("k1", b"a")
    assert made == [["a", "b"], ["c"]]
    assert s.get(["a", "b", "x"]) == {"a": ("k1", b"a"), "b": ("k1", b"b")}
    assert s.erase("a") and not s.erase("a")
    assert not s.erase("%")  # exact ids only: a LIKE pattern erases nothing
    s.erase("c")
    s.replace([("b", "k2", b"w")])
    assert list(s.rows()) == [("b", "k2", b"w")]


POLICY = (
    "version: 1\ndataset: d\nentities:\n  subject: {column: s}\ncolumns:\n"
    "  s: {op: tokenize, domain: subject}\n"
    "  t: {op: encrypt, entity: subject, per_entity_key: true}\n"
)


def _mask_in_process(args: tuple[str, str, int]) -> int:
    keyring_path, uri, seed = args
    ring = Keyring.open(keyring_path, "pw")
    m = Masker(parse_policy(POLICY), ring, services={"keystore_uri": uri})
    order = np.random.default_rng(seed).permutation(400)
    b = pa.RecordBatch.from_pydict(
        {
            "s": [f"SUBJ-{i % 100:08d}" for i in order],
            "t": pa.array([np.float32(i).tobytes() * 4 for i in order], pa.binary()),
        }
    )
    for k in range(0, 400, 40):  # many small batches: many interleaved transactions
        m.mask_batch(b.slice(k, 40))
    return 0


@pytest.mark.postgres
@pytest.mark.skipif(not pg_available(), reason="no PostgreSQL server on 127.0.0.1:5432")
def test_postgres_two_concurrent_maskers_one_key_per_subject(tmp_path: Path) -> None:
    import psycopg

    schema = f"ks_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    uri = f"{PG}?options=-csearch_path%3D{schema}"
    try:
        Keyring.create(tmp_path / "k.json", "pw")
        # two processes (separate connections) race to create the same subjects' keys
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(2) as pool:
            pool.map(_mask_in_process, [(str(tmp_path / "k.json"), uri, seed) for seed in (1, 2)])
        store = open_keystore(uri)
        rows = list(store.rows())
        assert len(rows) == 100
        assert len({r[0] for r in rows}) == 100
    finally:
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_new_sqlite_store_is_created_private(tmp_path: Path) -> None:
    store = SqliteKeyStore(str(tmp_path / "ks.sqlite"))
    assert store is not None
    for p in tmp_path.iterdir():  # the database and its WAL companions
        assert (p.stat().st_mode & 0o777) == 0o600, p
