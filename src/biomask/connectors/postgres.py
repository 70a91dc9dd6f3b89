"""PostgreSQL source and sink over ADBC: Arrow in, Arrow out, no per-row Python.

Why ADBC: the driver reads with ``COPY ... (FORMAT binary)`` straight into Arrow buffers
and ingests with binary ``COPY FROM``, so a million rows never become a million Python
tuples (see ``bench/connectors.py`` for the comparison with psycopg ``fetchall``).

URIs are libpq URIs plus biomask's own query parameters, which are removed before the URI
reaches libpq::

    postgresql://user[:password]@host[:port]/db?table=[schema.]name
    postgresql://user@host/db?query=SELECT ...
    postgresql://user@host/db?schema=s          (multi-table: each policy table in schema s)

The sink writes inside ONE transaction (autocommit off): rows are invisible to other
sessions until :meth:`PostgresSink.commit`, and :meth:`PostgresSink.abort` (or a killed
process, whose connection the server then rolls back) leaves the target as it was. An
overwrite goes through a staging table renamed over the target in the same transaction,
so readers see the old table until the commit and the new one after it.

A password in the URI never appears in a message, a repr or a lineage record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pyarrow as pa

from biomask.connectors.base import REJECT_COLUMN, DatasetRef, Source
from biomask.connectors.batches import rechunk
from biomask.errors import ConnectorError, OutputExistsError

__all__ = [
    "PgTarget",
    "PostgresSink",
    "PostgresSource",
    "open_pg_tables",
    "parse_pg_uri",
    "quarantine_pg_uri",
    "with_table",
]

_OWN_PARAMS = ("table", "query", "schema")
_COMMENT_PREFIX = "biomask:"


class PgTarget:
    """A parsed ``postgresql://`` URI: connection part, and what to read or write.

    Attributes
    ----------
    conn_uri:
        The libpq URI without biomask's parameters (may hold a password: never print it).
    display:
        ``postgresql://user@host:port/db`` with no password and no query.
    schema, table, query:
        What the URI names; ``schema`` defaults to ``public``.
    """

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        params = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in params if k in _OWN_PARAMS}
        rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
        self.conn_uri = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
        self.password = (
            unquote(parts.password) if parts.password else (dict(rest).get("password") or None)
        )
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise ConnectorError(
                f"invalid port in postgresql URI for host {parts.hostname}"
            ) from exc
        self.host = parts.hostname or "localhost"
        self.port = port
        self.user = unquote(parts.username) if parts.username else None
        self.db = unquote(parts.path.lstrip("/")) or (self.user or "postgres")
        user = f"{self.user}@" if self.user else ""
        self.display = f"postgresql://{user}{self.host}:{self.port}/{self.db}"
        self.query: str | None = own.get("query") or None
        self.schema = own.get("schema") or "public"
        self.table: str | None = None
        if own.get("table"):
            schema, table = _split_name(own["table"])
            self.table = table
            if schema is not None:
                self.schema = schema
        if self.query and self.table:
            raise ConnectorError(f"{self.display}: give either ?table= or ?query=, not both")

    @property
    def namespace(self) -> str:
        """OpenLineage namespace ``postgres://host:port``."""
        return f"postgres://{self.host}:{self.port}"

    @property
    def qualified(self) -> str:
        """Quoted ``"schema"."table"``."""
        assert self.table is not None
        return f"{_ident(self.schema)}.{_ident(self.table)}"

    def display_with(self, table: str | None = None) -> str:
        """Display URI naming a table (password-free)."""
        t = table or self.table
        return f"{self.display}?table={self.schema}.{t}" if t else self.display

    def connect(self) -> Any:
        """A DB-API connection with autocommit off; failures name the server, not secrets."""
        import adbc_driver_postgresql.dbapi as pg

        try:
            return pg.connect(self.conn_uri)
        except Exception as exc:
            raise ConnectorError(f"cannot connect to {self.display}: {self.reason(exc)}") from None

    def reason(self, exc: BaseException, *, scrub_quotes: bool = False) -> str:
        """First line of a driver error, without the query text and without the password."""
        text = str(exc)
        text = text.split("Query was:", 1)[0]
        text = re.sub(r"^\w+: \[libpq\] (Failed to connect: )?", "", text.strip())
        text = re.sub(r"^[A-Z_]+: ", "", text)
        line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        line = re.sub(r"\s+", " ", line.replace("ERROR:", "")).strip(" .")
        line = re.sub(r"SQLSTATE: \w+", "", line).strip(" .")
        line = re.sub(r"^Failed to execute COPY statement: PGRES_\w+\s*", "", line)
        if self.password:
            line = line.replace(self.password, "***")
        if scrub_quotes:
            # Data-phase errors ("invalid input syntax for type integer: "…"") may quote
            # a value; identifiers are lost too, which is the price of never leaking one.
            line = re.sub(r'"[^"]*"', '"…"', line)
            line = re.sub(r"'[^']*'", "'…'", line)
        return line


def parse_pg_uri(uri: str) -> PgTarget:
    """Parse a ``postgresql://`` URI (see the module docstring)."""
    return PgTarget(uri)


def _split_name(name: str) -> tuple[str | None, str]:
    """``schema.table`` -> (schema, table); double quotes protect dots (``"a.b".c``)."""
    m = re.fullmatch(r'\s*(?:("(?:[^"]|"")+"|[^."]+)\.)?("(?:[^"]|"")+"|[^."]+)\s*', name)
    if not m:
        raise ConnectorError("invalid table name in postgresql URI: use schema.table")

    def unq(s: str | None) -> str | None:
        if s is None:
            return None
        return s[1:-1].replace('""', '"') if s.startswith('"') else s

    table = unq(m.group(2))
    assert table is not None
    return unq(m.group(1)), table


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def with_table(uri: str, name: str) -> str:
    """``uri`` naming table ``name`` (in the URI's ``?schema=``, or the schema of its
    ``?table=``), with any ``?query=`` removed: the output URI of one policy table."""
    parts = urlsplit(uri)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = dict(params).get("schema")
    if dict(params).get("table"):
        s, _ = _split_name(dict(params)["table"])
        schema = s or schema
    rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
    table = f"{schema}.{name}" if schema else name
    rest.append(("table", table))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest, safe="."), ""))


def quarantine_pg_uri(uri: str) -> str:
    """Table ``t`` -> ``t_quarantine`` in the same schema and database."""
    target = PgTarget(uri)
    if target.table is None:
        raise ConnectorError(f"{target.display}: an output needs ?table=NAME")
    parts = urlsplit(uri)
    rest = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _OWN_PARAMS
    ]
    rest.append(("table", f"{target.schema}.{target.table}_quarantine"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest, safe="."), ""))


def _plain_type(t: pa.DataType) -> pa.DataType:
    """Extension types from the driver (numeric, json) -> their storage type."""
    if isinstance(t, pa.BaseExtensionType):
        return _plain_type(t.storage_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _plain_type(t.value_type)
        return pa.list_(inner) if pa.types.is_list(t) else pa.large_list(inner)
    return t


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, _plain_type(f.type), f.nullable) for f in schema],
        metadata=schema.metadata,
    )


def _plain_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for col, f in zip(batch.columns, schema, strict=True):
        arr = col
        while isinstance(arr.type, pa.BaseExtensionType):
            arr = arr.storage
        if not arr.type.equals(f.type):
            arr = arr.cast(f.type)
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class PostgresSource:
    """Rows of a table or query, streamed with ``cursor.fetch_record_batch()``.

    The schema is read up front (``ExecuteSchema``, no rows), so a policy problem stops
    the run before any data moves. ``uuid`` columns are read as text (``::text``), which
    is what a masking rule can work on; ``numeric`` and ``json`` arrive as strings. The
    table's comment, when biomask wrote it, becomes the schema metadata (key id, policy
    hash), so ``unmask`` can check the keyring against data that went through PostgreSQL.
    """

    def __init__(
        self,
        uri: str,
        *,
        batch_size: int = 65_536,
        table: str | None = None,
        target: PgTarget | None = None,
    ) -> None:
        self.target = target or PgTarget(uri)
        self.batch_size = batch_size
        self.table = table
        self.partition_by: list[str] = []
        self._estimate: int | None = None
        t = self.target
        if t.table is None and t.query is None:
            raise ConnectorError(f"{t.display}: name what to read with ?table=NAME or ?query=")
        base = t.qualified if t.table else f"({t.query}) AS biomask_q"
        conn = t.connect()
        try:
            cur = conn.cursor()
            meta: dict[str, str] = {}
            if t.table is not None:
                cur.execute(
                    "SELECT c.oid, c.reltuples::bigint FROM pg_catalog.pg_class c JOIN "
                    "pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = $1 AND c.relname = $2",
                    (t.schema, t.table),
                )
                row = cur.fetchone()
                if row is None:
                    raise ConnectorError(f"input {t.display_with()} not found")
                # the planner's statistics (-1: never analyzed): a progress bar's total
                self._estimate = int(row[1]) if row[1] is not None and row[1] > 0 else None
                cur.execute("SELECT pg_catalog.obj_description($1::oid, 'pg_class')", (row[0],))
                comment = (cur.fetchone() or (None,))[0]
                if isinstance(comment, str) and comment.startswith(_COMMENT_PREFIX):
                    with contextlib.suppress(ValueError):
                        meta = {
                            str(k): str(v)
                            for k, v in json.loads(comment[len(_COMMENT_PREFIX) :]).items()
                        }
            try:
                raw = cur.adbc_execute_schema(f"SELECT * FROM {base}")
            except Exception as exc:
                raise ConnectorError(f"cannot read {t.display_with()}: {t.reason(exc)}") from None
            cur.close()
        finally:
            conn.rollback()
            conn.close()
        cols = []
        for f in raw:
            pgtype = (f.metadata or {}).get(b"POSTGRESQL:type", b"").decode()
            expr = _ident(f.name)
            if pgtype == "uuid":
                expr = f"{expr}::text AS {_ident(f.name)}"
            cols.append(expr)
        self._sql = f"SELECT {', '.join(cols) or '*'} FROM {base}"
        fields = []
        for f in raw:
            pgtype = (f.metadata or {}).get(b"POSTGRESQL:type", b"").decode()
            typ = pa.string() if pgtype == "uuid" else _plain_type(f.type)
            fields.append(pa.field(f.name, typ))
        self._schema = pa.schema(fields, metadata=meta or None)

    @property
    def schema(self) -> pa.Schema:
        """Arrow schema of the rows (driver extension types replaced by storage types)."""
        return self._schema

    def row_estimate(self) -> int | None:
        """Rows in the table by PostgreSQL's statistics (``pg_class.reltuples``), for a
        progress bar; None for a query or a table never analyzed. An estimate: the bar
        may reach its end early or late."""
        return self._estimate

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the rows, re-chunked to ``batch_size`` rows per batch."""
        t = self.target
        conn = t.connect()
        try:
            cur = conn.cursor()
            try:
                cur.execute(self._sql)
                reader = cur.fetch_record_batch()
                for batch in rechunk(reader, self.batch_size, coalesce=True):
                    yield _plain_batch(batch, self._schema)
            except ConnectorError:
                raise
            except Exception as exc:
                raise ConnectorError(
                    f"cannot read {t.display_with()}: {t.reason(exc, scrub_quotes=True)}"
                ) from None
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def ref(self) -> DatasetRef:
        """OpenLineage name ``db.schema.table`` (a query is named by its hash)."""
        t = self.target
        if t.table is not None:
            name = f"{t.db}.{t.schema}.{t.table}"
            uri = t.display_with()
        else:
            digest = hashlib.sha256((t.query or "").encode()).hexdigest()[:16]
            name = f"{t.db}.query_{digest}"
            uri = t.display
        return DatasetRef(
            uri=uri, namespace=t.namespace, name=name, table=self.table, schema=self._schema
        )

    def __repr__(self) -> str:
        return f"PostgresSource({self.ref().uri!r})"


def list_pg_tables(uri: str) -> list[str]:
    """Tables (and views) in the URI's ``?schema=`` schema (default ``public``), sorted:
    what ``policy suggest`` drafts for when the URI names no table."""
    base = PgTarget(uri)
    conn = base.connect()
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN "
            "('r', 'v', 'm', 'p', 'f') ORDER BY 1",
            (base.schema,),
        )
        have = [str(r[0]) for r in cur.fetchall()]
        cur.close()
    except ConnectorError:
        raise
    except Exception as exc:
        raise ConnectorError(
            f"cannot list the tables of {base.display}: {base.reason(exc)}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
    return have


def open_pg_tables(
    uri: str, names: Sequence[str], *, batch_size: int = 65_536
) -> dict[str, Source]:
    """One :class:`PostgresSource` per policy table, in the URI's ``?schema=`` schema."""
    base = PgTarget(uri)
    have = list_pg_tables(uri)
    out: dict[str, Source] = {}
    for name in names:
        if name not in have:
            found = ", ".join(have) or "no tables"
            raise ConnectorError(
                f"table '{name}' not found in {base.display} schema {base.schema} (found: {found})"
            )
        out[name] = PostgresSource(with_table(uri, name), batch_size=batch_size, table=name)
    return out


def _ingest_type(t: pa.DataType) -> pa.DataType | None:
    """Arrow type the driver can ingest for ``t``, or None when PostgreSQL has none."""
    if pa.types.is_dictionary(t):
        return _ingest_type(t.value_type)
    if isinstance(t, pa.BaseExtensionType):
        return _ingest_type(t.storage_type)
    if pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t):
        return None
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = _ingest_type(t.value_type)
        return None if inner is None else pa.list_(inner)
    return t


class PostgresSink:
    """A table written in one transaction; invisible until :meth:`commit`.

    Parameters
    ----------
    uri:
        ``postgresql://...?table=[schema.]name``.
    schema:
        Schema of the batches (``REJECT_COLUMN`` is not written).
    overwrite:
        Replace an existing table: rows go to a staging table that is renamed over the
        target at commit, in the same transaction.
    append:
        Insert into the existing table (created if missing).
    metadata:
        Stored as the table comment (``biomask:{json}``) so a later read gets it back as
        schema metadata.
    """

    def __init__(
        self,
        uri: str,
        schema: pa.Schema,
        *,
        overwrite: bool = False,
        append: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        t = self.target = PgTarget(uri)
        if t.table is None:
            raise ConnectorError(f"{t.display}: an output needs ?table=NAME")
        if overwrite and append:
            raise ConnectorError("give either --overwrite or --append, not both")
        self.overwrite = overwrite
        self.append = append
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        meta.update(metadata or {})
        self.metadata = dict(sorted(meta.items()))
        fields = []
        for f in schema:
            if f.name == REJECT_COLUMN:
                continue
            typ = _ingest_type(f.type)
            if typ is None:
                raise ConnectorError(
                    f"cannot write {t.display_with()}: column '{f.name}' has type {f.type}, "
                    "which PostgreSQL ingestion cannot hold; write Parquet instead"
                )
            fields.append(pa.field(f.name, typ))
        self.schema = pa.schema(fields)
        self._conn = t.connect()
        self._done = False
        self._closed = False
        self._rows = 0
        try:
            cur = self._conn.cursor()
            cur.execute(
                "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                (t.schema, t.table),
            )
            self._exists = cur.fetchone() is not None
            cur.close()
        except Exception as exc:
            self._close(rollback=True)
            raise ConnectorError(f"cannot write {t.display_with()}: {t.reason(exc)}") from None
        if self._exists and not (overwrite or append):
            self._close(rollback=True)
            raise OutputExistsError(
                f"output {t.display_with()} exists; pass --overwrite to replace it "
                "(or --append to add rows)"
            )
        if append:
            self._write_table, self._mode = t.table, "create_append"
        elif self._exists:
            self._write_table, self._mode = f"_biomask_stage_{secrets.token_hex(6)}", "create"
        else:
            self._write_table, self._mode = t.table, "create"

    def write(self, batch: pa.RecordBatch) -> None:
        """Ingest one batch (binary COPY) inside the open transaction."""
        if self._closed:
            raise ConnectorError(f"cannot write {self.target.display_with()}: the sink is closed")
        self._ingest(self._conform(batch))

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if REJECT_COLUMN in batch.schema.names:
            batch = batch.drop_columns([REJECT_COLUMN])
        if batch.schema.names != self.schema.names:
            raise ConnectorError(
                f"cannot write {self.target.display_with()}: a batch does not have the "
                "output columns"
            )
        if batch.schema.equals(self.schema, check_metadata=False):
            return batch
        arrays = []
        for col, f in zip(batch.columns, self.schema, strict=True):
            arr = col
            while isinstance(arr.type, pa.BaseExtensionType):
                arr = arr.storage
            if not arr.type.equals(f.type):
                arr = arr.cast(f.type)
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _ingest(self, batch: pa.RecordBatch) -> None:
        t = self.target
        try:
            cur = self._conn.cursor()
            cur.adbc_ingest(self._write_table, batch, mode=self._mode, db_schema_name=t.schema)
            cur.close()
        except Exception as exc:
            raise ConnectorError(
                f"cannot write {t.display_with()}: {t.reason(exc, scrub_quotes=True)}"
            ) from None
        self._rows += batch.num_rows
        if self._mode == "create":
            self._mode = "append"

    def commit(self) -> None:
        """Rename the staging table into place (overwrite), set the comment, COMMIT."""
        if self._done:
            return
        if self._closed:
            raise ConnectorError(f"cannot commit {self.target.display_with()}: it was aborted")
        t = self.target
        try:
            if self._mode in ("create", "create_append"):
                # Nothing written: still create the (empty) table with its schema.
                self._ingest(pa.RecordBatch.from_pylist([], schema=self.schema))
            cur = self._conn.cursor()
            if self._write_table != t.table:
                cur.execute(f"DROP TABLE {t.qualified}")
                cur.execute(
                    f"ALTER TABLE {_ident(t.schema)}.{_ident(self._write_table)} "
                    f"RENAME TO {_ident(t.table or '')}"
                )
            if self.metadata and not self.append:
                comment = _COMMENT_PREFIX + json.dumps(self.metadata, sort_keys=True)
                cur.execute(f"COMMENT ON TABLE {t.qualified} IS {_literal(comment)}")
            cur.close()
            self._conn.commit()
        except ConnectorError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise ConnectorError(f"cannot write {t.display_with()}: {t.reason(exc)}") from None
        self._done = True
        self._close(rollback=False)

    def abort(self) -> None:
        """ROLLBACK: the target is exactly as it was before the run."""
        if self._done or self._closed:
            return
        self._close(rollback=True)

    def _close(self, *, rollback: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if rollback:
            with contextlib.suppress(Exception):
                self._conn.rollback()
        with contextlib.suppress(Exception):
            self._conn.close()

    @property
    def rows_written(self) -> int:
        """Rows ingested so far (committed or not)."""
        return self._rows

    def ref(self) -> DatasetRef:
        """OpenLineage name ``db.schema.table``; no files."""
        t = self.target
        return DatasetRef(
            uri=t.display_with(),
            namespace=t.namespace,
            name=f"{t.db}.{t.schema}.{t.table}",
            schema=self.schema,
        )

    def __repr__(self) -> str:
        return f"PostgresSink({self.target.display_with()!r})"
