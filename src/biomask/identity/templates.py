"""Template sets: ids and unit-norm float32 templates, read batch by batch from a URI.

A :class:`TemplateSet` streams a source (Parquet, CSV, JSON Lines, Arrow, PostgreSQL,
one file or a table of a multi-table export) and yields :class:`Block` objects: the rows'
ids, their global row numbers and their templates as an ``(n, dim)`` float32 matrix of
L2-normalised rows. Templates may be plain (``fixed_size_list``/``list`` of float32 or
float64) or ciphertexts written by the ``encrypt`` operator; ciphertexts are decrypted in
this process, one batch at a time, with the keyring and the policy that encrypted them
(the associated data names the policy's dataset, table and column). A plaintext template
never leaves memory: nothing here writes one anywhere.

Input is checked as it streams, and each problem stops the run with one message that
names the dataset and column: templates of mixed lengths, NaN or infinite values, zero
vectors (no direction, so no cosine), a missing id or template column, missing ids.
Rows without a template (null) and rows whose subject key was erased are not compared;
they are counted and reported (:attr:`TemplateSet.skipped`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.connectors import DatasetRef, Source, display_uri, open_source, open_tables
from biomask.errors import BiomaskError
from biomask.keys import Keyring
from biomask.policies import Policy

__all__ = ["Block", "IdentityInputError", "TemplateSet", "open_template_set"]

_ROW = "__biomask_identity_row__"


class IdentityInputError(BiomaskError):
    """A template set cannot be compared: the message names the dataset and the column."""


@dataclass
class Block:
    """Consecutive rows of a template set that have a usable template.

    Attributes
    ----------
    ids:
        The rows' ids, as stored (string or integer).
    rows:
        Each row's number in the whole set (0-based, counting every row read).
    vectors:
        ``(len(ids), dim)`` float32, C-contiguous, every row of unit L2 norm.
    """

    ids: pa.Array
    rows: np.ndarray
    vectors: np.ndarray
    #: position of the first row among the set's usable rows (pairs i < j use positions)
    first: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        if len(blocks) == 1:
            return blocks[0]
        return Block(
            ids=pa.concat_arrays([b.ids for b in blocks]),
            rows=np.concatenate([b.rows for b in blocks]),
            vectors=np.concatenate([b.vectors for b in blocks]),
            first=blocks[0].first,
        )


def _template_table(policy: Policy, column: str) -> str | None:
    """The policy table that holds ``column`` (an encrypted one first), if any."""
    specs = policy.table_specs()
    holding = [t for t, s in specs.items() if column in s.columns]
    enc = [t for t in holding if specs[t].columns[column].op == "encrypt"]
    found = enc or holding
    return found[0] if found else None


@dataclass
class TemplateSet:
    """One set of templates with ids, read from ``uri`` as a stream of :class:`Block`.

    Parameters
    ----------
    uri:
        A file, a directory of files, a ``postgresql://`` URI, or a directory holding one
        file per table of a multi-table policy (then ``table`` picks the template table).
    id_column, template_column:
        Which columns hold the ids and the templates.
    label:
        How messages name this set (``a``, ``b``, ``reference``, ``input``).
    policy, keyring:
        Needed only for encrypted templates (and to find the table of a multi-table
        export).
    keystore:
        Where per-subject template keys live (default: beside the keyring).
    batch_size:
        Rows decoded (and decrypted) at a time.
    """

    uri: str
    id_column: str
    template_column: str
    label: str = "input"
    policy: Policy | None = None
    keyring: Keyring | None = None
    table: str | None = None
    keystore: str | None = None
    batch_size: int = 65_536
    #: only rows with these ids are read (a calibration sample); None reads every row
    keep_ids: pa.Array | None = None
    #: rows read, rows compared, and rows skipped by reason (after a full pass)
    rows_read: int = 0
    rows_used: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dim: int | None = None
    _source: Source | None = None
    _unmasker: Any = None
    _cache: list[Block] | None = None

    # -- opening -------------------------------------------------------------------------
    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = self._open()
        return self._source

    def _open(self) -> Source:
        path = Path(self.uri)
        if self.policy is not None and self.policy.is_multi_table and path.is_dir():
            table = self.table or _template_table(self.policy, self.template_column)
            if table is None:
                raise IdentityInputError(
                    f"{self.label} {self.uri}: no table of policy '{self.policy.dataset}' has "
                    f"a column '{self.template_column}'; name the table with --table"
                )
            self.table = table
            return open_tables(self.uri, [table], batch_size=self.batch_size)[table]
        return open_source(self.uri, batch_size=self.batch_size)

    @property
    def name(self) -> str:
        """The set as messages name it: its label and URI (credentials removed)."""
        uri = display_uri(self.uri)
        return f"{self.label} {uri}" + (f" (table {self.table})" if self.table else "")

    def ref(self) -> DatasetRef:
        return self.source.ref()

    def _check_columns(self, schema: pa.Schema) -> None:
        names = schema.names
        for what, col in (("id", self.id_column), ("template", self.template_column)):
            if col not in names:
                have = ", ".join(n for n in names if not n.startswith("__")) or "none"
                raise IdentityInputError(f"{self.name}: no {what} column '{col}' (columns: {have})")

    # -- reading -------------------------------------------------------------------------
    def _raw_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        src = self.source
        schema = src.schema
        self._check_columns(schema)
        meta = schema.metadata
        wanted = [c for c in dict.fromkeys(columns) if c in schema.names]
        reader = getattr(src, "column_batches", None)
        it = reader(wanted) if callable(reader) else (b.select(wanted) for b in src.batches())
        for batch in it:
            if batch.schema.metadata != meta and meta is not None:
                batch = batch.replace_schema_metadata(meta)
            yield batch

    def ids(self) -> Iterator[pa.Array]:
        """The id column, batch by batch, without reading or decrypting templates."""
        for batch in self._raw_batches([self.id_column]):
            ids = batch.column(self.id_column)
            self._check_ids(ids)
            yield ids

    def _check_ids(self, ids: pa.Array) -> None:
        if ids.null_count:
            raise IdentityInputError(
                f"{self.name}: column '{self.id_column}' has {ids.null_count} missing ids; "
                "every template needs the id of its person"
            )

    def batches(self) -> Iterator[Block]:
        """The set's usable rows, batch by batch (a held copy when :meth:`hold` ran)."""
        if self._cache is not None:
            yield from self._cache
            return
        cols = [self.id_column, self.template_column, *self._entity_columns()]
        start = 0
        used = 0
        skipped: dict[str, int] = {}
        for batch in self._raw_batches(cols):
            n = batch.num_rows
            sel: np.ndarray | None = None
            if self.keep_ids is not None:
                mask = pc.is_in(batch.column(self.id_column), value_set=self.keep_ids)
                sel = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
                batch = batch.take(pa.array(sel))
            block = self._block(batch, 0, skipped)
            if sel is not None:
                block.rows = sel[block.rows]
            block.rows += start
            block.first = used
            start += n
            used += len(block)
            if len(block):
                yield block
        # counted per pass and kept only when a pass completes: passes may nest (a
        # self-join streams the set past blocks of itself)
        self.rows_read, self.rows_used, self.skipped = start, used, skipped

    def hold(self, max_rows: int) -> bool:
        """Keep the set in memory (decrypted) when it has at most ``max_rows`` usable rows,
        so later passes do not read and decrypt it again. Returns whether it is held."""
        if self._cache is not None:
            return True
        kept: list[Block] = []
        n = 0
        for b in self.batches():
            n += len(b)
            if n > max_rows:
                return False
            kept.append(b)
        self._cache = kept
        return True

    def release(self) -> None:
        """Drop the held copy (:meth:`hold`); later passes read the source again."""
        self._cache = None

    def blocks(self, max_rows: int) -> Iterator[Block]:
        """The set in blocks of at most ``max_rows`` usable rows (whole batches joined)."""
        pending: list[Block] = []
        n = 0
        for b in self.batches():
            for part in _split(b, max_rows):
                if n + len(part) > max_rows and pending:
                    yield Block.concat(pending)
                    pending, n = [], 0
                pending.append(part)
                n += len(part)
        if pending:
            yield Block.concat(pending)

    # -- one batch -----------------------------------------------------------------------
    def _entity_columns(self) -> list[str]:
        """Columns the templates' associated data binds: the entities' and the row key's."""
        if self.policy is None:
            return []
        cols = [e.column for e in self.policy.entities.values()]
        for name, spec in self.policy.table_specs().items():
            if self.table is not None and name != self.table:
                continue
            row_key = getattr(spec.columns.get(self.template_column), "row_key", None)
            if row_key is not None and row_key not in cols:
                cols.append(row_key)  # a template bound to its row needs that row's key
        return cols

    def _is_encrypted(self, schema: pa.Schema) -> bool:
        meta = schema.metadata or {}
        return f"biomask.encrypt.{self.template_column}.type".encode() in meta

    def _decrypt(
        self, batch: pa.RecordBatch, skipped: dict[str, int]
    ) -> tuple[pa.Array, np.ndarray]:
        """Decrypted templates of the rows that opened, and those rows' positions."""
        if self.policy is None or self.keyring is None:
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' is encrypted; decrypting it "
                "needs --keyring and the --policy that encrypted it"
            )
        if self._unmasker is None:
            from biomask.masking import RunServices, Unmasker

            specs = self.policy.table_specs()
            table = self.table or _template_table(self.policy, self.template_column)
            if table is None or table not in specs:
                raise IdentityInputError(
                    f"{self.name}: policy '{self.policy.dataset}' has no table with an "
                    f"encrypted column '{self.template_column}'; name it with --table"
                )
            unmasker = Unmasker(self.policy, self.keyring, table=table)
            # decrypting needs only the key store (Unmasker.needs): no pre-read
            unmasker.prepare(RunServices(keystore_uri=self.keystore))
            self._unmasker = unmasker
        # only the template and the entity tokens its associated data binds go through the
        # unmasker, with row numbers to tell which rows opened: a reversible id column is
        # never reversed here
        ent = [c for c in self._entity_columns() if c in batch.schema.names]
        cols = [batch.column(c) for c in [*ent, self.template_column]]
        names = [*ent, self.template_column, _ROW]
        rows = pa.array(np.arange(batch.num_rows, dtype=np.int64))
        sub = pa.RecordBatch.from_arrays([*cols, rows], names=names)
        sub = sub.replace_schema_metadata(batch.schema.metadata)
        res = self._unmasker.mask_batch(sub)
        if res.quarantine is not None and res.quarantine.num_rows:
            reasons = res.quarantine.column(res.quarantine.num_columns - 1)
            for item in pc.value_counts(reasons).to_pylist():
                _skip(skipped, str(item["values"] or "unreadable"), item["counts"])
        out = res.output
        return out.column(self.template_column), out.column(_ROW).to_numpy()

    def _block(self, batch: pa.RecordBatch, start: int, skipped: dict[str, int]) -> Block:
        ids = batch.column(self.id_column)
        self._check_ids(ids)
        col = batch.column(self.template_column)
        t = col.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            if not self._is_encrypted(batch.schema):
                raise IdentityInputError(
                    f"{self.name}: column '{self.template_column}' holds bytes but no "
                    "biomask encryption metadata; templates must be lists of floats, or "
                    "ciphertexts written by the encrypt operator to Parquet, Arrow or "
                    "PostgreSQL"
                )
            col, pos = self._decrypt(batch, skipped)
        elif _is_float_list(t):
            pos = np.arange(len(col), dtype=np.int64)
        else:
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' has type {t}; templates must "
                "be lists of float32/float64 (or encrypt ciphertexts)"
            )
        if col.null_count:
            valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
            _skip(skipped, "no template", int((~valid).sum()))
            col = col.filter(pa.array(valid))
            pos = pos[valid]
        vectors = self._matrix(col, start, pos)
        rows = pos + start
        keep_ids = ids if len(pos) == len(ids) else ids.take(pa.array(pos))
        return Block(ids=keep_ids, rows=rows.astype(np.int64), vectors=vectors)

    def _matrix(self, col: pa.Array, start: int, pos: np.ndarray) -> np.ndarray:
        """``(n, dim)`` unit-norm float32 rows, checked; one copy at most."""
        n = len(col)
        if n == 0:
            return np.zeros((0, self.dim or 0), np.float32)
        if pa.types.is_fixed_size_list(col.type):
            dims = np.full(n, col.type.list_size, dtype=np.int64)
        else:
            dims = np.diff(col.offsets.to_numpy(zero_copy_only=False).astype(np.int64))
        d0 = int(dims[0]) if self.dim is None else self.dim
        wrong = np.flatnonzero(dims != d0)
        if len(wrong):
            r = int(pos[wrong[0]] + start)
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' has templates of mixed "
                f"lengths ({d0} and {int(dims[wrong[0]])} values, row {r}); every template "
                "of a set must have the same length"
            )
        if d0 == 0:
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' holds empty templates"
            )
        self.dim = d0
        flat = col.flatten()
        if flat.null_count:
            bad = pc.is_null(flat).to_numpy(zero_copy_only=False).reshape(n, d0).any(axis=1)
            r = int(pos[np.flatnonzero(bad)[0]] + start)
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' has a template with missing "
                f"values (row {r})"
            )
        vec = _own_float32(flat).reshape(n, d0)
        norms = np.sqrt(np.einsum("ij,ij->i", vec, vec, dtype=np.float64))
        finite = np.isfinite(norms)
        if not finite.all():
            r = int(pos[np.flatnonzero(~finite)[0]] + start)
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' has a template with NaN or "
                f"infinite values (row {r})"
            )
        zero = norms == 0
        if zero.any():
            r = int(pos[np.flatnonzero(zero)[0]] + start)
            raise IdentityInputError(
                f"{self.name}: column '{self.template_column}' has a zero vector (row {r}): "
                "it has no direction, so its cosine similarity is undefined"
            )
        vec /= norms.astype(np.float32)[:, None]
        return vec


def _own_float32(flat: pa.Array) -> np.ndarray:
    """The values as a writable float32 array this set may normalise in place.

    A decrypted batch's buffer is fresh and belongs to this batch alone (the decryptor
    hands out a new or recycled block per batch, as the training feed relies on): it is
    used as it is, which saves a copy of every decrypted batch. Buffers read from a file
    are read-only and shared with Arrow, so those are copied.
    """
    buf = flat.buffers()[1]
    if pa.types.is_float32(flat.type) and buf is not None and not flat.null_count:
        arr = np.frombuffer(buf, np.float32, count=len(flat), offset=flat.offset * 4)
        if arr.flags.writeable:
            return arr
    return np.array(flat.to_numpy(zero_copy_only=False), dtype=np.float32, copy=True)


def _skip(skipped: dict[str, int], reason: str, n: int) -> None:
    if n:
        skipped[reason] = skipped.get(reason, 0) + int(n)


def _is_float_list(t: pa.DataType) -> bool:
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return bool(is_list and pa.types.is_floating(t.value_type))


def _split(b: Block, max_rows: int) -> Iterator[Block]:
    if len(b) <= max_rows:
        yield b
        return
    for s in range(0, len(b), max_rows):
        e = min(s + max_rows, len(b))
        yield Block(
            ids=b.ids.slice(s, e - s), rows=b.rows[s:e], vectors=b.vectors[s:e], first=b.first + s
        )


def open_template_set(
    uri: str,
    *,
    id_column: str,
    template_column: str,
    label: str = "input",
    policy: Policy | None = None,
    keyring: Keyring | None = None,
    table: str | None = None,
    keystore: str | None = None,
    batch_size: int = 65_536,
) -> TemplateSet:
    """Open a template set and check its columns now, before any run starts."""
    ts = TemplateSet(
        uri,
        id_column,
        template_column,
        label=label,
        policy=policy,
        keyring=keyring,
        table=table,
        keystore=keystore,
        batch_size=batch_size,
    )
    ts._check_columns(ts.source.schema)
    return ts
