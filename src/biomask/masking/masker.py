"""The Masker: applies a policy to RecordBatches.

The Masker is pure: the same batch, policy and keyring give byte-identical output in any
process and any order of batches, because every token comes from a keyed function of the
value and its domain, never from state accumulated across batches. That is what makes
tokens consistent across files, runs and Ray workers without a shared token table.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.errors import KeyringError, PolicyError, SchemaError
from biomask.keys import Keyring
from biomask.masking.entities import SubjectNames
from biomask.masking.registry import (
    BatchMemo,
    Binding,
    Operator,
    OperatorContext,
    get_operator,
)
from biomask.masking.services import RunNeeds, RunServices
from biomask.policies.models import Policy, TableSpec
from biomask.types import REASON_COLUMN, REJECT_COLUMN

__all__ = ["REASON_COLUMN", "REJECT_COLUMN", "MaskedBatch", "Masker", "Unmasker"]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def default_threads() -> int:
    """Column threads per Masker: ``BIOMASK_THREADS``, else one per usable core, at most 4.

    Ray workers pass ``threads=1``: there, each worker already has its own core.
    """
    env = os.environ.get("BIOMASK_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _pool(threads: int) -> ThreadPoolExecutor | None:
    """A process-wide pool of ``threads`` workers (None for one thread: run inline)."""
    if threads <= 1:
        return None
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(
                threads, thread_name_prefix="biomask-column"
            )
        return pool


@dataclass
class MaskedBatch:
    """The result of masking one batch.

    Attributes
    ----------
    output:
        Rows that were masked completely.
    quarantine:
        Rows that could not be masked completely, masked where possible, with a reason
        column; None when every row was fine. ``len(output) + len(quarantine)`` always
        equals the input row count.
    stats:
        Counters for the run summary (text detections...).
    """

    output: pa.RecordBatch
    quarantine: pa.RecordBatch | None
    stats: dict[str, int] = field(default_factory=dict)


class Masker:
    """Apply one table's rules of a policy to batches of that table.

    A run is a handshake (:mod:`biomask.masking.services`): build the Masker (every rule
    is checked and bound, no I/O), ask what it :meth:`needs`, read that, hand it over with
    :meth:`prepare`, then :meth:`mask_batch` as often as there are batches. A Masker that
    is never prepared still masks, on defaults (no known values for the text lexicon, the
    keyring's default key store): that is what a quick check or a test wants.

    Parameters
    ----------
    policy:
        The validated policy.
    keyring:
        The keyring whose primary key derives every domain key.
    table:
        Which table of a multi-table policy; may be omitted for a single-table policy.
    threads:
        How many columns of a batch are masked at once (default: :func:`default_threads`).
        The output does not depend on it.
    """

    def __init__(
        self,
        policy: Policy,
        keyring: Keyring,
        *,
        table: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.threads = default_threads() if threads is None else max(1, threads)
        specs = policy.table_specs()
        if table is None:
            if len(specs) != 1:
                raise SchemaError(
                    f"policy {policy.source or policy.dataset} has tables "
                    f"{', '.join(specs)}: say which one to mask"
                )
            table = next(iter(specs))
        if table not in specs:
            raise SchemaError(
                f"table '{table}' is not in policy {policy.source or policy.dataset} "
                f"(tables: {', '.join(specs)})"
            )
        self.policy = policy
        self.keyring = keyring
        self.table = table
        self.spec: TableSpec = specs[table]
        self.unlisted = self.spec.unlisted or policy.unlisted
        self._ops: dict[str, Operator[Any]] = {}
        for name, op_spec in self.spec.columns.items():
            try:
                cls = get_operator(op_spec.op)
            except KeyError:
                raise PolicyError(
                    f"operator '{op_spec.op}' is not available in this installation",
                    path=policy.source,
                    line=self._line(name),
                    field=self._field(name),
                ) from None
            binding = Binding(policy, keyring, table, name)
            self._ops[name] = cls(op_spec, binding)
        self._bound: tuple[pa.Schema, pa.Schema, list[str]] | None = None
        self._bound_in: pa.Schema | None = None
        #: subject key names after ``keys rotate-tokens`` (built on first need)
        self._names: SubjectNames | None = None

    # -- schema ------------------------------------------------------------------------
    def _field(self, column: str) -> str:
        return (
            f"tables.{self.table}.columns.{column}"
            if self.policy.is_multi_table
            else f"columns.{column}"
        )

    def _line(self, column: str) -> int | None:
        if self.policy.is_multi_table:
            return self.policy.line_of("tables", self.table, "columns", column)
        return self.policy.line_of("columns", column)

    @property
    def operators(self) -> dict[str, Operator[Any]]:
        """The bound operator of every column rule."""
        return dict(self._ops)

    @property
    def key_ids(self) -> list[str]:
        """Master key ids this table's operators use."""
        return sorted({k for op in self._ops.values() if (k := op.key_id) is not None})

    # -- the run's services ---------------------------------------------------------------
    def _served(self) -> list[Operator[Any]]:
        """The operators that take part in this pass (all of them, for masking)."""
        return list(self._ops.values())

    def needs(self) -> RunNeeds:
        """What this table's rules need from the run before the first batch.

        The ``text`` operator's lexicon needs the values of the columns its linked domains
        mask (names, e-mails, phones) in every table of the policy; ``encrypt`` needs the
        key store. The Masker only declares them: the caller reads them (the pipeline
        through its connectors, once for all tables and engines) and hands them over with
        :meth:`prepare`, so no operator reads data. Empty when nothing is needed.
        """
        return RunNeeds.union(op.needs() for op in self._served())

    def prepare(self, services: RunServices) -> None:
        """Hand every rule what :meth:`needs` declared, before the first batch.

        One ``services`` object serves every table of a run (and, pickled, every remote
        worker): what is derived from it, such as the text lexicon, is built once per
        process and shared, so each table and engine masks notes with the same lexicon.
        """
        for op in self._served():
            op.prepare(services)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """Check ``schema`` against the policy and return the output schema.

        Raises
        ------
        SchemaError
            A source column the policy does not name (under ``unlisted: error``), or a
            policy column missing from the source.
        PolicyError
            A column whose type its operator cannot take (names the policy line).
        """
        return self._bind(schema)[0]

    def _bind(self, schema: pa.Schema) -> tuple[pa.Schema, pa.Schema, list[str]]:
        if self._bound is not None and self._bound_in == schema:
            return self._bound
        where = self.policy.source or "the policy"
        names = [n for n in schema.names if n != REJECT_COLUMN]
        unlisted = [n for n in names if n not in self.spec.columns]
        if unlisted and self.unlisted == "error":
            raise SchemaError(
                f"column '{unlisted[0]}' of table '{self.table}' is not in {where}: add a rule "
                "for it, or set 'unlisted: drop' or 'unlisted: keep' explicitly"
            )
        missing = [n for n in self.spec.columns if n not in names]
        if missing:
            raise SchemaError(
                f"{where} names column '{missing[0]}' of table '{self.table}', but the input "
                f"has no such column (input columns: {', '.join(names)})"
            )
        fields: list[pa.Field] = []
        order: list[str] = []
        extra: dict[bytes, bytes] = {}
        for n in names:
            f = schema.field(n)
            if n not in self.spec.columns:
                if self.unlisted == "keep":
                    fields.append(f)
                    order.append(n)
                continue
            op = self._ops[n]
            if not op.keeps_column:
                continue
            dtype = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            problem = op.check(dtype)
            if problem is not None:
                raise PolicyError(
                    f"{problem} (column '{n}' is {dtype})",
                    path=self.policy.source,
                    line=self._line(n),
                    field=self._field(n),
                )
            fields.append(pa.field(n, op.output_type(dtype), nullable=True))
            order.append(n)
            extra.update({k.encode(): v.encode() for k, v in op.metadata(dtype).items()})
        meta = {
            **extra,
            b"biomask.policy_sha256": self.policy.sha256.encode(),
            b"biomask.keyring_id": self.keyring.keyring_id.encode(),
            b"biomask.key_id": self.keyring.primary_key_id.encode(),
            b"biomask.token_key_id": self.keyring.token_key_id.encode(),
        }
        out = pa.schema(fields, metadata=meta)
        quarantine = pa.schema([*fields, pa.field(REASON_COLUMN, pa.string())], metadata=meta)
        self._bound = (out, quarantine, order)
        self._bound_in = schema
        return self._bound

    # -- masking -----------------------------------------------------------------------
    def _entity_order(self) -> list[str]:
        cols = {e.column for e in self.policy.entities.values()}
        return [c for c in self.spec.columns if c in cols] + [
            c for c in self.spec.columns if c not in cols
        ]

    def _run(
        self, batch: pa.RecordBatch, names: list[str], ctxs: dict[str, OperatorContext]
    ) -> dict[str, pa.Array]:
        """Mask the columns ``names``, the parallel-safe ones on the worker threads.

        The operators spend their time in Arrow, numpy and compiled kernels, which release
        the GIL, so the columns of one batch keep every core busy. Operators that touch a
        model or a key store run here, on the calling thread, while the others proceed.
        """

        def one(name: str) -> pa.Array:
            values = batch.column(name)
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            if pa.types.is_large_string(values.type):  # operators work on 32-bit offsets
                values = values.cast(pa.string())
            return self._ops[name](values, ctxs[name])

        pool = _pool(self.threads)
        futures = {
            n: pool.submit(one, n) for n in names if pool is not None and self._ops[n].parallel_safe
        }
        out = {n: one(n) for n in names if n not in futures}
        out.update({n: f.result() for n, f in futures.items()})
        return out

    def mask_batch(self, batch: pa.RecordBatch) -> MaskedBatch:
        """Mask one batch; rows that fail go to ``quarantine`` with their reason."""
        out_schema, q_schema, order = self._bind(batch.schema)
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}
        if REJECT_COLUMN in batch.schema.names:
            rej = batch.column(REJECT_COLUMN)
            flagged = pc.is_valid(rej).to_numpy(zero_copy_only=False)
            for i in np.flatnonzero(flagged):
                reasons[int(i)] = str(rej[int(i)].as_py())
            bad |= flagged
        ent_by_col: dict[str, list[str]] = {}
        for ename, ent in self.policy.entities.items():
            ent_by_col.setdefault(ent.column, []).append(ename)
        entity_tokens: dict[str, pa.Array] = {}
        entity_names: dict[str, pa.Array] = {}
        memo = BatchMemo()
        flagged = bad.copy()
        # Each column gets its own failure mask, merged below in column order, so the
        # reason recorded for a row is the same whichever thread finished first.
        ctxs: dict[str, OperatorContext] = {}
        todo: list[str] = []
        for name in self._entity_order():
            if self._ops[name].keeps_column or name in ent_by_col:
                todo.append(name)
                ctxs[name] = OperatorContext(
                    self.table,
                    name,
                    batch,
                    entity_tokens,
                    flagged.copy(),
                    memo=memo,
                    entity_names=entity_names,
                )
        # Entity columns first, with every column that does not read entity tokens; then
        # the columns that do (date shifts, templates), once the tokens exist.
        later = [c for c in todo if c not in ent_by_col and self._ops[c].needs_entities]
        results = self._run(batch, [c for c in todo if c not in later], ctxs)
        for name in todo:
            for ename in ent_by_col.get(name, []):
                entity_tokens[ename] = results[name]
        for name, col in results.items():  # e.g. the row keys templates are bound to
            memo.put(("masked", name), col)
        entity_names.update(self._entity_names(batch, entity_tokens, later))
        results.update(self._run(batch, later, ctxs))
        stats: dict[str, int] = {}
        for name in todo:
            self._check_rule(name, batch, ctxs[name].bad & ~flagged, flagged, ctxs[name].reasons)
        for name in todo:
            ctx = ctxs[name]
            for i in np.flatnonzero(ctx.bad & ~bad):
                reasons[int(i)] = ctx.reasons.get(int(i), f"{name}: unmaskable")
            bad |= ctx.bad
            for k, v in ctx.stats.items():
                stats[k] = stats.get(k, 0) + v
        arrays: list[pa.Array] = []
        for name in order:
            if name in results:
                arrays.append(results[name].cast(out_schema.field(name).type))
            else:  # unlisted: keep
                arrays.append(batch.column(name))
        masked = pa.RecordBatch.from_arrays(arrays, schema=out_schema)
        if not bad.any():
            return MaskedBatch(masked, None, stats)
        good_idx = pa.array(np.flatnonzero(~bad))
        bad_rows = np.flatnonzero(bad)
        q = masked.take(pa.array(bad_rows))
        reason_col = pa.array([reasons.get(int(i), "unmaskable") for i in bad_rows], pa.string())
        quarantine = pa.RecordBatch.from_arrays([*q.columns, reason_col], schema=q_schema)
        return MaskedBatch(masked.take(good_idx), quarantine, stats)

    def _entity_names(
        self, batch: pa.RecordBatch, entity_tokens: dict[str, pa.Array], columns: list[str]
    ) -> dict[str, pa.Array]:
        """Subject key names of the entities the ``columns``' operators declare.

        While the token key is the entity key the names are the tokens (no work at all).
        After ``keys rotate-tokens`` they are the raw ids masked by the entity column's
        rule under the entity key, once per distinct value (:mod:`biomask.masking.entities`).
        """
        wanted = {e for c in columns if (e := self._ops[c].names_entity) is not None}
        if not wanted:
            return {}
        ring = self.keyring
        if ring.token_key_id == ring.entity_key_id:
            return {e: entity_tokens[e] for e in wanted if e in entity_tokens}
        if self._names is None:
            self._names = SubjectNames(self.policy, ring, self.table)
        return {
            e: self._names.from_values(e, batch.column(self.policy.entities[e].column))
            for e in wanted
            if e in entity_tokens
        }

    #: a rule failing on every value of at least this many rows of one batch is a policy
    #: problem (wrong format, a reversible rule on a tiny domain), not bad data
    RULE_FAILURE_MIN_ROWS = 2

    def _check_rule(
        self,
        name: str,
        batch: pa.RecordBatch,
        own_bad: np.ndarray,
        flagged: np.ndarray,
        reasons: dict[int, str],
    ) -> None:
        """Stop the run when ``name``'s rule failed on every value it was given.

        Quarantine is for the odd bad value; a rule that fails on all of a batch's values
        would quarantine the whole table, one batch after another. The error names the
        rule's line in the policy file (values are never quoted: reasons hold none).
        """
        n_bad = int(own_bad.sum())
        if n_bad < self.RULE_FAILURE_MIN_ROWS or name not in batch.schema.names:
            return
        valid = pc.is_valid(batch.column(name)).to_numpy(zero_copy_only=False)
        if n_bad != int((valid & ~flagged).sum()):
            return
        first = reasons.get(int(np.flatnonzero(own_bad)[0]), f"{name}: unmaskable")
        loc = (
            ("tables", self.table, "columns", name)
            if self.policy.tables is not None
            else ("columns", name)
        )
        raise PolicyError(
            f"the rule failed on every value of a batch ({n_bad} rows; first reason: "
            f"{first}): a policy problem, not bad data; fix the rule (nothing was written)",
            path=self.policy.source,
            line=self.policy.line_of(*loc),
            field=".".join(loc),
        )


class Unmasker(Masker):
    """Reverse the reversible columns of masked data; leave every other column as it is.

    Reversal needs the key that masked the data: its id is read from the masked data's
    schema metadata (``biomask.key_id``, ``biomask.keyring_id``), and a keyring that does
    not hold it is refused before anything is read, with a message that names only the
    (public) ids.
    """

    def _served(self) -> list[Operator[Any]]:
        """Only the rules this pass rewrites: text is not reversed, so it needs no lexicon."""
        return [op for op in self._ops.values() if self._handles(op)]

    def _check_keyring(self, schema: pa.Schema) -> str:
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        ring_id = meta.get("biomask.keyring_id")
        key_id = meta.get("biomask.key_id")
        if ring_id is None or key_id is None:
            raise KeyringError(
                "the input carries no biomask key id (was it written by 'biomask mask' to "
                "Parquet, Arrow or PostgreSQL? CSV and JSON Lines cannot carry it); cannot "
                "tell which key reverses it"
            )
        # Reversible tokens come from the token key; data written before the keyring had
        # one was masked under its primary key, which biomask.key_id names.
        key_id = meta.get("biomask.token_key_id", key_id)
        if ring_id != self.keyring.keyring_id or key_id not in self.keyring.key_ids:
            raise KeyringError(
                f"this keyring ({self.keyring.keyring_id}) is not the one that masked the data "
                f"(keyring {ring_id}, key {key_id}); unmask needs that keyring"
            )
        self._meta = meta
        return str(key_id)

    def _bind(self, schema: pa.Schema) -> tuple[pa.Schema, pa.Schema, list[str]]:
        if self._bound is not None and self._bound_in == schema:
            return self._bound
        self._key_id = self._check_keyring(schema)
        fields: list[pa.Field] = []
        for f in schema:
            op = self._ops.get(f.name)
            if op is not None and op.reversible:
                fields.append(pa.field(f.name, op.reversed_type(f.type, self._meta)))
            else:
                fields.append(f)
        meta = {k: v for k, v in (schema.metadata or {}).items()}
        meta[b"biomask.unmasked"] = b"true"
        out = pa.schema(fields, metadata=meta)
        quarantine = pa.schema([*fields, pa.field(REASON_COLUMN, pa.string())], metadata=meta)
        self._bound = (out, quarantine, list(schema.names))
        self._bound_in = schema
        return self._bound

    #: the reason a failed row gets when its operator gave none
    _default_reason = "irreversible"

    def _handles(self, op: Operator[Any]) -> bool:
        """Whether this pass rewrites ``op``'s column (others are copied as they are)."""
        return op.reversible

    def _transform(
        self, op: Operator[Any], values: pa.Array, ctx: OperatorContext, out_type: pa.DataType
    ) -> pa.Array:
        return op.reverse(values, ctx, self._key_id)

    @property
    def reversible_columns(self) -> list[str]:
        """Columns this unmasker reverses."""
        return [n for n, op in self._ops.items() if self._handles(op)]

    def mask_batch(self, batch: pa.RecordBatch) -> MaskedBatch:
        """Reverse one batch of masked data."""
        out_schema, q_schema, order = self._bind(batch.schema)
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}
        stats: dict[str, int] = {}
        # encrypted columns are bound to the *masked* entity tokens, which the input holds
        entity_tokens = {
            e: batch.column(spec.column)
            for e, spec in self.policy.entities.items()
            if spec.column in batch.schema.names
        }
        arrays = []
        for name in order:
            values = batch.column(name)
            op = self._ops.get(name)
            if op is None or not self._handles(op):
                arrays.append(values)
                continue
            ctx = OperatorContext(
                self.table, name, batch, entity_tokens, bad, reasons, stats, self._meta
            )
            arrays.append(self._transform(op, values, ctx, out_schema.field(name).type))
        out = pa.RecordBatch.from_arrays(arrays, schema=out_schema)
        if not bad.any():
            return MaskedBatch(out, None, stats)
        bad_rows = np.flatnonzero(bad)
        q = out.take(pa.array(bad_rows))
        default = self._default_reason
        reason_col = pa.array([reasons.get(int(i), default) for i in bad_rows], pa.string())
        quarantine = pa.RecordBatch.from_arrays([*q.columns, reason_col], schema=q_schema)
        return MaskedBatch(out.take(pa.array(np.flatnonzero(~bad))), quarantine, stats)


class TemplateUpgrader(Unmasker):
    """Rewrite the template columns of masked data in the current ciphertext format.

    ``biomask rekey --upgrade``: each ``encrypt`` column is decrypted (version 1 or 2) and
    encrypted again as version 2, bound to the row key the policy names, with the same
    per-subject data keys (the key store's, found by the subject's token). Every other
    column, reversible tokens included, is copied as it is. Rows whose subject key was
    erased stay unreadable and go to quarantine with that reason.
    """

    def _bind(self, schema: pa.Schema) -> tuple[pa.Schema, pa.Schema, list[str]]:
        if self._bound is not None and self._bound_in == schema:
            return self._bound
        self._key_id = self._check_keyring(schema)
        out = pa.schema(list(schema), metadata=schema.metadata)
        quarantine = pa.schema([*schema, pa.field(REASON_COLUMN, pa.string())])
        self._bound = (out, quarantine.with_metadata(schema.metadata), list(schema.names))
        self._bound_in = schema
        return self._bound

    _default_reason = "unreadable"

    def _handles(self, op: Operator[Any]) -> bool:
        return op.name == "encrypt"

    def _transform(
        self, op: Operator[Any], values: pa.Array, ctx: OperatorContext, out_type: pa.DataType
    ) -> pa.Array:
        plain = op.reverse(values, ctx, self._key_id)
        return op(plain, ctx).cast(out_type)
