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
        """Delete one key (exact id, no patterns); whether it was there."""
        ...

    def rows(self) -> Iterator[Row]:
        """Every row (for rekey)."""
        ...

    def replace(self, rows: Sequence[Row]) -> None:
        """Overwrite the key id and wrapped key of existing rows (rekey), in one transaction."""
        ...


class SqliteKeyStore:
    """The embedded store: one SQLite file beside the keyring (or in memory for tests).

    ``secure_delete`` is on and an erase checkpoints and truncates the write-ahead log, so
    an erased wrapped key does not linger in the file's free pages or in the WAL (copies in
    backups of the file are the operator's to manage).
    """

    def __init__(self, path: str) -> None:
        self.uri = path
        self._memory = path.startswith("memory:")
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

    def erase(self, dek_id: str) -> bool:
        with self._lock:
            with self._conn:
                cur = self._conn.execute("DELETE FROM biomask_keys WHERE dek_id = ?", (dek_id,))
            if not self._memory:
                # the WAL still holds the page with the key until it is checkpointed
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return cur.rowcount > 0

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
    """

    def __init__(self, uri: str) -> None:
        import psycopg

        from biomask.connectors import display_uri

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
                cur = self._conn.execute("DELETE FROM biomask_keys WHERE dek_id = %s", (dek_id,))
                return cur.rowcount > 0
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
    missing = [d for d in ids if d not in found]
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


def open_keystore(uri: str) -> KeyStore:
    """A PostgreSQL store for ``postgresql://...``, else SQLite at that path."""
    scheme = urlsplit(uri).scheme
    if scheme in ("postgresql", "postgres"):
        return PostgresKeyStore(uri)
    return SqliteKeyStore(uri)
