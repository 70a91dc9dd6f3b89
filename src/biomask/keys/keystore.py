"""Key stores for wrapped data keys: embedded SQLite by default, PostgreSQL when shared.

A store holds *wrapped* data keys (DEKs), never raw ones: each row is ``(dek_id, key_id,
wrapped)``, where ``wrapped`` is AES-256-GCM under the keyring's key-encryption key for
``key_id`` (associated data: the ``dek_id``, so rows cannot be swapped). Template
ciphertexts name their DEK by id, so

- rotating the keyring and running ``biomask rekey`` re-wraps rows without touching a
  single template ciphertext, and
- deleting one subject's row (``biomask erase``) makes every copy of that subject's
  templates unreadable, wherever the files went (crypto-shredding, GDPR Art. 17).

DEK ids are ``e:<entity>:<token>`` for a subject's own key (``per_entity_key: true``;
``<token>`` is the *masked* subject token, never an original id) and ``run:<random>`` for
the key one run shares over a column. One table holds both kinds
(``biomask_keys(dek_id text primary key, key_id text, wrapped bytes, created timestamp)``),
so rekey and erase have one place to look.

Erasure leaves a tombstone (``biomask_erased(dek_id, erased)``, in the same transaction as
the delete): a subject key that is absent *with* a tombstone was erased, and its rows are
quarantined as such; absent *without* one means the wrong, damaged or incomplete store (a
SQLite file copied without its ``-wal``, say), which is an error, never mistaken for an
erasure. Reading a store that does not exist is an error too (only masking creates one).

Creation (:meth:`KeyStore.get_or_create`) reads, inserts the missing ids with
``INSERT ... ON CONFLICT DO NOTHING`` and reads those again, so concurrent maskers agree on
exactly one key per subject: whoever inserts first wins, the others read the winner's key.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from biomask.errors import KeyringError

__all__ = [
    "KeyStore",
    "PostgresKeyStore",
    "Row",
    "SqliteKeyStore",
    "default_keystore_uri",
    "open_keystore",
]

#: ``(dek_id, key_id, wrapped)``
Row = tuple[str, str, bytes]
#: given DEK ids missing from the store, fresh wrapped rows for them
MakeRows = Callable[[list[str]], list[Row]]
_MEMORY: dict[str, sqlite3.Connection] = {}
_LOCK = threading.Lock()
_CHUNK = 500  # SQLite's default limit on bound parameters is 999


class KeyStore(Protocol):
    """Where wrapped data keys live."""

    #: where the store is, with any password removed (for messages and lineage)
    uri: str

    def get_or_create(self, dek_ids: Sequence[str], make: MakeRows) -> dict[str, tuple[str, bytes]]:
        """``(key_id, wrapped)`` for every id, creating the missing ones with ``make``.

        Under concurrent writers the first insert wins and every caller gets that row, so
        there is exactly one key per id. ``make`` is called only for ids that were missing
        at the first read (fresh DEKs cost a random draw and a wrap each).
        """
        ...

    def get(self, dek_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """``(key_id, wrapped)`` for each id present; erased or unknown ids are absent."""
        ...

    def erase(self, dek_id: str) -> bool:
        """Delete one key (exact id, no patterns) and leave its tombstone; whether it was
        there."""
        ...

    def erased(self, dek_ids: Sequence[str]) -> set[str]:
        """Which of these ids were erased (have a tombstone)."""
        ...

    def rows(self) -> Iterator[Row]:
        """Every row (for rekey)."""
        ...

    def replace(self, rows: Sequence[Row]) -> None:
        """Overwrite the key id and wrapped key of existing rows (rekey), in one transaction."""
        ...


class SqliteKeyStore:
    """The embedded store: one SQLite file beside the keyring (or in memory for tests).

    ``secure_delete`` is on (deleted rows are overwritten with zeros in the file), and an
    erase first checkpoints the write-ahead log into the file and truncates it; where
    another connection holds the store open (a running mask or training feed) that
    checkpoint cannot complete, and erase refuses before deleting anything, because the
    key's bytes would stay in the ``-wal`` file. After the delete it checkpoints again and
    checks the result. Copies in backups of the file are the operator's to manage.

    Parameters
    ----------
    path:
        The file (or ``memory:<name>``).
    create:
        Create the file when it does not exist (masking); otherwise a missing file is an
        error (unmask, erase, rekey), never an empty store whose keys all look erased.
    """

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.uri = path
        self._memory = path.startswith("memory:")
        if not self._memory and not create and not Path(path).is_file():
            raise KeyringError(
                f"key store {path} not found: templates cannot be decrypted or erased without "
                "the store they were masked with (pass --keystore, or restore the file)"
            )
        try:
            if self._memory:
                with _LOCK:
                    conn = _MEMORY.get(path)
                    if conn is None:
                        conn = sqlite3.connect(":memory:", check_same_thread=False)
                        _MEMORY[path] = conn
                self._conn = conn
            else:
                # created 0600 before SQLite opens it (its -wal and -shm files copy the
                # mode): wrapped keys are no business of other local users
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS biomask_keys ("
                "dek_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, wrapped BLOB NOT NULL, "
                "created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS biomask_erased ("
                "dek_id TEXT PRIMARY KEY, erased TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            self._conn.commit()
        except sqlite3.Error as exc:
            raise KeyringError(f"cannot open key store {path}: {exc}") from None
        self._lock = threading.Lock()

    def _select(self, ids: list[str]) -> dict[str, tuple[str, bytes]]:
        out: dict[str, tuple[str, bytes]] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            q = f"SELECT dek_id, key_id, wrapped FROM biomask_keys WHERE dek_id IN ({marks})"
            for dek_id, key_id, wrapped in self._conn.execute(q, chunk):
                out[dek_id] = (key_id, bytes(wrapped))
        return out

    def _insert(self, rows: list[Row]) -> None:
        with self._conn:  # one transaction; other processes wait on the file lock
            self._conn.executemany(
                "INSERT INTO biomask_keys (dek_id, key_id, wrapped) VALUES (?, ?, ?) "
                "ON CONFLICT(dek_id) DO NOTHING",
                rows,
            )

    def get_or_create(self, dek_ids: Sequence[str], make: MakeRows) -> dict[str, tuple[str, bytes]]:
        try:
            with self._lock:
                return _get_or_create(self._select, self._insert, dek_ids, make)
        except sqlite3.Error as exc:
            raise KeyringError(f"cannot write key store {self.uri}: {exc}") from None

    def get(self, dek_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        with self._lock:
            return self._select(list(dict.fromkeys(dek_ids)))

    def _checkpoint(self, when: str) -> None:
        """Copy the WAL into the file and truncate it, or raise naming why not."""
        if self._memory:
            return
        self._conn.execute("PRAGMA busy_timeout = 2000")
        try:
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._conn.execute("PRAGMA busy_timeout = 30000")
        if busy:
            raise KeyringError(
                f"key store {self.uri} is busy (another process has it open, e.g. a running "
                f"mask, unmask or training feed): {when}; stop it and run erase again"
            )

    def erase(self, dek_id: str) -> bool:
        with self._lock:
            try:
                # Before deleting: a reader that holds the WAL would keep the key's page
                # there after the delete, and erase would report what it did not do.
                self._checkpoint("nothing was erased")
                with self._conn:
                    cur = self._conn.execute("DELETE FROM biomask_keys WHERE dek_id = ?", (dek_id,))
                    if cur.rowcount > 0:
                        self._conn.execute(
                            "INSERT INTO biomask_erased (dek_id) VALUES (?) "
                            "ON CONFLICT(dek_id) DO NOTHING",
                            (dek_id,),
                        )
                self._checkpoint(
                    "the key is deleted, but its bytes may remain in the -wal file until the "
                    "store is checkpointed"
                )
            except sqlite3.Error as exc:
                raise KeyringError(f"cannot erase in key store {self.uri}: {exc}") from None
            return cur.rowcount > 0

    def erased(self, dek_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(dek_ids))
        out: set[str] = set()
        with self._lock:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                q = f"SELECT dek_id FROM biomask_erased WHERE dek_id IN ({marks})"
                out.update(d for (d,) in self._conn.execute(q, chunk))
        return out

    def rows(self) -> Iterator[Row]:
        with self._lock:
            got = list(self._conn.execute("SELECT dek_id, key_id, wrapped FROM biomask_keys"))
        for dek_id, key_id, wrapped in got:
            yield dek_id, key_id, bytes(wrapped)

    def replace(self, rows: Sequence[Row]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(
                "UPDATE biomask_keys SET key_id = ?, wrapped = ? WHERE dek_id = ?",
                [(k, w, d) for d, k, w in rows],
            )


class PostgresKeyStore:
    """A shared store in PostgreSQL (table ``biomask_keys``), for several maskers at once.

    One connection per store, in autocommit mode with explicit transactions; errors name
    the exception class only, and :attr:`uri` has the password removed, so credentials
    never reach a message or lineage.

    Erasure deletes the row and leaves a tombstone in one transaction, then runs
    ``VACUUM FULL`` on the table: PostgreSQL keeps a deleted row's bytes in a dead tuple,
    and a plain vacuum only marks that space free (the bytes stay until a later row
    overwrites them), while ``VACUUM FULL`` rewrites the table into a new file without the
    dead row and unlinks the old one (it locks the table for that moment). WAL segments,
    replicas and base backups taken before the erase still hold the wrapped key until they
    age out: keep their retention shorter than your erasure deadline (docs/templates.md).
    """

    def __init__(self, uri: str, *, create: bool = True) -> None:
        import psycopg

        from biomask.types import display_uri

        self.uri = display_uri(uri)
        self._errors: type[Exception] = psycopg.Error
        try:
            self._conn = psycopg.connect(uri, autocommit=True)
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's
            # catalog (UniqueViolation on pg_type); serialize creators on an advisory lock.
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('biomask_keys'))")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS biomask_keys ("
                    "dek_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, wrapped BYTEA NOT NULL, "
                    "created TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS biomask_erased ("
                    "dek_id TEXT PRIMARY KEY, erased TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
        except psycopg.Error as exc:
            raise KeyringError(f"cannot open key store {self.uri}: {type(exc).__name__}") from None
        self._lock = threading.Lock()

    def _fail(self, exc: Exception) -> KeyringError:
        return KeyringError(f"key store {self.uri} failed: {type(exc).__name__}")

    def _select(self, ids: list[str]) -> dict[str, tuple[str, bytes]]:
        cur = self._conn.execute(
            "SELECT dek_id, key_id, wrapped FROM biomask_keys WHERE dek_id = ANY(%s)", (ids,)
        )
        return {d: (k, bytes(w)) for d, k, w in cur.fetchall()}

    def _insert(self, rows: list[Row]) -> None:
        # one INSERT for all rows; the SELECT after it is a new statement, so under READ
        # COMMITTED it sees a concurrent writer's row that won the conflict
        with self._conn.transaction():
            self._conn.execute(
                "INSERT INTO biomask_keys (dek_id, key_id, wrapped) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[]) "
                "ON CONFLICT (dek_id) DO NOTHING",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
            )

    def get_or_create(self, dek_ids: Sequence[str], make: MakeRows) -> dict[str, tuple[str, bytes]]:
        try:
            with self._lock:
                return _get_or_create(self._select, self._insert, dek_ids, make)
        except self._errors as exc:
            raise self._fail(exc) from None

    def get(self, dek_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        try:
            with self._lock:
                return self._select(list(dict.fromkeys(dek_ids)))
        except self._errors as exc:
            raise self._fail(exc) from None

    def erase(self, dek_id: str) -> bool:
        try:
            with self._lock:
                with self._conn.transaction():
                    cur = self._conn.execute(
                        "DELETE FROM biomask_keys WHERE dek_id = %s", (dek_id,)
                    )
                    if cur.rowcount > 0:
                        self._conn.execute(
                            "INSERT INTO biomask_erased (dek_id) VALUES (%s) "
                            "ON CONFLICT (dek_id) DO NOTHING",
                            (dek_id,),
                        )
                # the dead tuple keeps the bytes; VACUUM FULL rewrites the table without it
                self._conn.execute("VACUUM FULL biomask_keys")
                return cur.rowcount > 0
        except self._errors as exc:
            raise self._fail(exc) from None

    def erased(self, dek_ids: Sequence[str]) -> set[str]:
        try:
            with self._lock:
                cur = self._conn.execute(
                    "SELECT dek_id FROM biomask_erased WHERE dek_id = ANY(%s)",
                    (list(dict.fromkeys(dek_ids)),),
                )
                return {d for (d,) in cur.fetchall()}
        except self._errors as exc:
            raise self._fail(exc) from None

    def rows(self) -> Iterator[Row]:
        try:
            with self._lock:
                got = self._conn.execute(
                    "SELECT dek_id, key_id, wrapped FROM biomask_keys"
                ).fetchall()
        except self._errors as exc:
            raise self._fail(exc) from None
        for d, k, w in got:
            yield d, k, bytes(w)

    def replace(self, rows: Sequence[Row]) -> None:
        try:
            with self._lock, self._conn.transaction():
                self._conn.execute(
                    "UPDATE biomask_keys AS t SET key_id = v.k, wrapped = v.w "
                    "FROM unnest(%s::text[], %s::text[], %s::bytea[]) AS v(d, k, w) "
                    "WHERE t.dek_id = v.d",
                    ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                )
        except self._errors as exc:
            raise self._fail(exc) from None


def _get_or_create(
    select: Callable[[list[str]], dict[str, tuple[str, bytes]]],
    insert: Callable[[list[Row]], None],
    dek_ids: Sequence[str],
    make: MakeRows,
) -> dict[str, tuple[str, bytes]]:
    """Read, insert the missing ids (``ON CONFLICT DO NOTHING``), read those again.

    The second read returns whichever row won a race with a concurrent writer, so every
    caller ends up with the same key per id.
    """
    ids = list(dict.fromkeys(dek_ids))
    found = select(ids)
    # sorted: two writers inserting overlapping ids take the unique index's row locks in
    # one order, so they wait for each other instead of deadlocking (PostgreSQL)
    missing = sorted(d for d in ids if d not in found)
    if missing:
        insert(make(missing))
        found.update(select(missing))
    return found


def default_keystore_uri(keyring_path: Path | None, keyring_id: str) -> str:
    """``<keyring>.keystore.sqlite`` beside a keyring file; in memory for an ephemeral one."""
    if keyring_path is None:
        return f"memory:{keyring_id}"
    # absolute: stores are cached per URI, and a relative path means another file after chdir
    return str(keyring_path.resolve().with_name(keyring_path.name + ".keystore.sqlite"))


def open_keystore(uri: str, *, create: bool = True) -> KeyStore:
    """A PostgreSQL store for ``postgresql://...``, else SQLite at that path.

    With ``create=False`` a SQLite file that does not exist is an error (see
    :class:`SqliteKeyStore`).
    """
    scheme = urlsplit(uri).scheme
    if scheme in ("postgresql", "postgres"):
        return PostgresKeyStore(uri, create=create)
    return SqliteKeyStore(uri, create=create)
