"""Key stores for wrapped data keys: embedded SQLite by default, PostgreSQL when shared.

A store holds *wrapped* data keys (DEKs), never raw ones: each row is ``(dek_id, key_id,
wrapped)``, where ``wrapped`` is AES-256-GCM under the keyring's key-encryption key for
``key_id``. Template ciphertexts name their DEK by id, so

- rotating the keyring and running ``biomask rekey`` re-wraps rows without touching a
  single template ciphertext, and
- deleting one subject's row (``biomask erase``) makes every copy of that subject's
  templates unreadable, wherever the files went (crypto-shredding, GDPR Art. 17).

Creation is ``INSERT ... ON CONFLICT DO NOTHING`` followed by a read, so concurrent maskers
agree on exactly one key per subject.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from biomask.errors import KeyringError

__all__ = [
    "KeyStore",
    "PostgresKeyStore",
    "SqliteKeyStore",
    "default_keystore_uri",
    "open_keystore",
]

Row = tuple[str, str, bytes]  # dek_id, key_id, wrapped
_MEMORY: dict[str, sqlite3.Connection] = {}
_LOCK = threading.Lock()


class KeyStore(Protocol):
    """Where wrapped data keys live."""

    uri: str

    def put_if_absent(self, rows: Sequence[Row]) -> None:
        """Insert rows whose dek_id is new; existing rows win (concurrent writers agree)."""
        ...

    def get(self, dek_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """(key_id, wrapped) for each dek_id present; erased or unknown ids are absent."""
        ...

    def delete_like(self, pattern: str) -> int:
        """Delete rows whose dek_id matches a SQL LIKE pattern; returns how many."""
        ...

    def rows(self) -> Iterator[Row]:
        """Every row (for rekey)."""
        ...

    def replace(self, rows: Sequence[Row]) -> None:
        """Overwrite rows (rekey), in one transaction."""
        ...


class SqliteKeyStore:
    """The embedded store: one SQLite file beside the keyring (or in memory for tests)."""

    def __init__(self, path: str) -> None:
        self.uri = path
        try:
            if path.startswith("memory:"):
                with _LOCK:
                    conn = _MEMORY.get(path)
                    if conn is None:
                        conn = sqlite3.connect(":memory:", check_same_thread=False)
                        _MEMORY[path] = conn
                self._conn = conn
            else:
                self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS biomask_keys ("
                "dek_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, wrapped BLOB NOT NULL)"
            )
            self._conn.commit()
        except sqlite3.Error as exc:
            raise KeyringError(f"cannot open key store {path}: {exc}") from None
        self._lock = threading.Lock()

    def put_if_absent(self, rows: Sequence[Row]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO biomask_keys VALUES (?, ?, ?) ON CONFLICT(dek_id) DO NOTHING", rows
            )

    def get(self, dek_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        out: dict[str, tuple[str, bytes]] = {}
        ids = list(dict.fromkeys(dek_ids))
        with self._lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                q = f"SELECT dek_id, key_id, wrapped FROM biomask_keys WHERE dek_id IN ({marks})"
                for dek_id, key_id, wrapped in self._conn.execute(q, chunk):
                    out[dek_id] = (key_id, bytes(wrapped))
        return out

    def delete_like(self, pattern: str) -> int:
        with self._lock, self._conn:
            cur = self._conn.execute("DELETE FROM biomask_keys WHERE dek_id LIKE ?", (pattern,))
            return int(cur.rowcount)

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
    """A shared store in PostgreSQL (table ``biomask_keys``), for several maskers at once."""

    def __init__(self, uri: str) -> None:
        import psycopg

        from biomask.connectors import display_uri

        self.uri = display_uri(uri)
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
            reason = type(exc).__name__
            raise KeyringError(f"cannot open key store {self.uri}: {reason}") from None
        self._lock = threading.Lock()

    def put_if_absent(self, rows: Sequence[Row]) -> None:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO biomask_keys (dek_id, key_id, wrapped) VALUES (%s, %s, %s) "
                "ON CONFLICT (dek_id) DO NOTHING",
                rows,
            )

    def get(self, dek_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        with self._lock:
            cur = self._conn.execute(
                "SELECT dek_id, key_id, wrapped FROM biomask_keys WHERE dek_id = ANY(%s)",
                (list(dict.fromkeys(dek_ids)),),
            )
            return {d: (k, bytes(w)) for d, k, w in cur.fetchall()}

    def delete_like(self, pattern: str) -> int:
        with self._lock:
            cur = self._conn.execute("DELETE FROM biomask_keys WHERE dek_id LIKE %s", (pattern,))
            return int(cur.rowcount)

    def rows(self) -> Iterator[Row]:
        with self._lock:
            got = self._conn.execute("SELECT dek_id, key_id, wrapped FROM biomask_keys").fetchall()
        for d, k, w in got:
            yield d, k, bytes(w)

    def replace(self, rows: Sequence[Row]) -> None:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                "UPDATE biomask_keys SET key_id = %s, wrapped = %s WHERE dek_id = %s",
                [(k, w, d) for d, k, w in rows],
            )


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
