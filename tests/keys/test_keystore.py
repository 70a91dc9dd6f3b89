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
from biomask.masking import Masker, RunServices
from biomask.policies import parse_policy


def _with_store(masker: Masker, uri: str) -> Masker:
    """``masker`` handed the run's key store, as the pipeline hands it (Masker.prepare)."""
    assert masker.needs().keystore  # encrypt declares it
    masker.prepare(RunServices(keystore_uri=uri))
    return masker


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
    m = _with_store(Masker(parse_policy(POLICY), ring), uri)
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


def _wrapped_key(store_path: Path, ring: Keyring) -> tuple[str, bytes]:
    pol = parse_policy(
        "version: 1\ndataset: d\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: tokenize, domain: subject}\n"
        "  t: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    batch = pa.RecordBatch.from_pydict(
        {"sid": ["SUBJ-000001", "SUBJ-000002"], "t": [b"\x01" * 64, b"\x02" * 64]}
    )
    out = _with_store(Masker(pol, ring), str(store_path)).mask_batch(batch).output
    dek_id = f"e:subject:{out.column('sid')[0].as_py()}"
    return dek_id, open_keystore(str(store_path)).get([dek_id])[dek_id][1]


def test_sqlite_erase_leaves_no_key_bytes_and_a_tombstone(tmp_path: Path) -> None:
    path = tmp_path / "ks.sqlite"
    dek_id, wrapped = _wrapped_key(path, Keyring.ephemeral())
    store = SqliteKeyStore(str(path))
    assert store.erase(dek_id)
    assert store.erased([dek_id, "e:subject:other"]) == {dek_id}
    files = [p for p in tmp_path.iterdir() if p.name.startswith("ks.sqlite")]
    assert all(wrapped not in p.read_bytes() for p in files)
    wal = tmp_path / "ks.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_sqlite_erase_refuses_while_the_store_is_busy(tmp_path: Path) -> None:
    import sqlite3

    from biomask.errors import KeyringError

    path = tmp_path / "ks.sqlite"
    dek_id, _ = _wrapped_key(path, Keyring.ephemeral())
    reader = sqlite3.connect(str(path))
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM biomask_keys").fetchone()  # holds a WAL snapshot
    store = SqliteKeyStore(str(path))
    store._conn.execute("INSERT INTO biomask_erased (dek_id) VALUES ('e:x:pending')")
    store._conn.commit()  # something in the WAL the reader's snapshot pins
    try:
        with pytest.raises(KeyringError) as err:
            store.erase(dek_id)
        assert str(err.value) == (
            f"key store {path} is busy (another process has it open, e.g. a running mask, "
            "unmask or training feed): nothing was erased; stop it and run erase again"
        )
        assert store.get([dek_id])  # nothing was erased
    finally:
        reader.rollback()
        reader.close()
    assert store.erase(dek_id)


def test_missing_store_is_an_error_not_an_erasure(tmp_path: Path) -> None:
    from biomask.errors import KeyringError

    with pytest.raises(KeyringError, match=r"key store .*nope\.sqlite not found"):
        open_keystore(str(tmp_path / "nope.sqlite"), create=False)
    assert not (tmp_path / "nope.sqlite").exists()


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL not reachable")
def test_postgres_erase_leaves_no_key_bytes_in_the_table_file(tmp_path: Path) -> None:
    import psycopg

    schema = f"ks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    uri = f"{PG}?options=-csearch_path%3D{schema}"
    try:
        store = open_keystore(uri)
        rows = [(f"e:subject:T{i}", "k1", np.random.default_rng(i).bytes(60)) for i in range(50)]
        store.get_or_create([r[0] for r in rows], lambda ids: [r for r in rows if r[0] in ids])
        with psycopg.connect(uri, autocommit=True) as c:
            c.execute("CHECKPOINT")
            data_dir = c.execute("SHOW data_directory").fetchone()[0]

            def table_file() -> bytes:
                rel = c.execute("SELECT pg_relation_filepath('biomask_keys')").fetchone()[0]
                return (Path(data_dir) / rel).read_bytes()

            assert rows[7][2] in table_file()
            assert store.erase(rows[7][0])
            c.execute("CHECKPOINT")
            body = table_file()
            assert rows[7][2] not in body
            assert rows[8][2] in body  # everyone else's key is still there
            assert store.erased([rows[7][0], rows[8][0]]) == {rows[7][0]}
    finally:
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")


def test_store_copied_without_its_wal_is_an_error_not_an_erasure(tmp_path: Path) -> None:
    import shutil

    from biomask.errors import KeyringError
    from biomask.masking import Unmasker

    ring = Keyring.ephemeral()
    pol = parse_policy(
        "version: 1\ndataset: d\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: tokenize, domain: subject}\n"
        "  t: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    batch = pa.RecordBatch.from_pydict({"sid": ["SUBJ-000001"], "t": [b"\x01" * 64]})
    live = tmp_path / "live.sqlite"
    out = _with_store(Masker(pol, ring), str(live)).mask_batch(batch).output
    assert (tmp_path / "live.sqlite-wal").stat().st_size > 0  # the key is still in the WAL
    shutil.copy(live, tmp_path / "copy.sqlite")  # the file alone
    unmask = _with_store(Unmasker(pol, ring), str(tmp_path / "copy.sqlite"))
    with pytest.raises(KeyringError) as err:
        unmask.mask_batch(out)
    assert str(err.value) == (
        f"key store {tmp_path / 'copy.sqlite'} has no key for 1 subject(s) of this data and no "
        "record of erasing them: it is not the store the data was masked with, or it is "
        "damaged or incomplete (e.g. a SQLite store copied without its -wal file)"
    )
