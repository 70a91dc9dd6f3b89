"""Mask on Ray: the same policy and keyring, distributed, with the local engine's output.

Tokens need no shared state (they are keyed functions of value and domain), so each Ray
worker builds its Masker once from a *key handle* (:meth:`~biomask.keys.Keyring.worker_handle`):
the master keys sealed under a fresh random key, passed as the actors' argument, and that
random key (the token), passed separately in their environment (``BIOMASK_WORKER_TOKEN``:
set before a local Ray that the run starts, in the actors' ``runtime_env`` otherwise).
Workers never see the passphrase (a local Ray is started without ``BIOMASK_PASSPHRASE`` in
its environment) nor the lineage signing key; neither half alone holds a key, and a
:class:`~biomask.keys.Keyring` still refuses to be pickled.

Two entry points:

* :func:`mask_dataset` masks any ``ray.data.Dataset`` of one policy table and returns a
  dataset. **Quarantine choice:** no row is ever dropped. By default every input row comes
  out, with a ``_biomask_reason`` column that is null for a row masked completely and holds
  the (value-free) reason for a quarantined row, which is masked wherever possible and never
  passes through in clear; ``rows in = rows with a null reason + rows with a reason``. With
  ``on_quarantine="fail"`` a quarantined row fails the job instead, naming the reason.
* :func:`run_mask_ray` is ``biomask mask --engine ray``: Parquet in, cut into units (slices
  of row groups, several per worker), each read, masked and written by a pool of Ray core
  actors into the temporary directory of an atomic directory sink, which the driver renames
  into place on success. Table data never passes through the driver or the object store.
  Quarantined rows go to ``<output>.quarantine`` exactly as with the local engine. The
  whole distributed run is ONE lineage run written by the driver; its row counts come from
  the units' results, and its evidence is collected as units finish, in input order.

The output equals the local engine's row for row (same order, same values, same schema
metadata), except template ciphertexts: their nonces are random by design, and each worker
uses its own run data key. A CI test compares the two engines.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomask.connectors.files import _iter_parquet, parquet_options
from biomask.errors import (
    BiomaskError,
    ConnectorError,
    MissingDependencyError,
    QuarantineLimitError,
)
from biomask.keys.keyring import PASSPHRASE_ENV
from biomask.masking.masker import REASON_COLUMN, MaskedBatch

if TYPE_CHECKING:
    from biomask.connectors import Source
    from biomask.lineage import LineageRecorder
    from biomask.masking.api import PolicyLike
    from biomask.pipeline import RunSummary
    from biomask.policies import Policy

__all__ = ["mask_dataset", "run_mask_ray"]

log = logging.getLogger(__name__)

#: CPU shares Ray reserves: a pool that reserved every CPU starves the read and write tasks
#: (they would wait for a free CPU forever); the actors still use a whole core each
_ACTOR_CPUS = 0.5
_PART = "part-{:06d}.parquet"
_QUARANTINE_DIR = ".quarantine"  # hidden: never listed as output data


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "the Ray engine needs Ray: pip install 'biomask[ray]'"
        ) from None
    return ray


# -- workers -------------------------------------------------------------------------------


WORKER_TOKEN_ENV = "BIOMASK_WORKER_TOKEN"
"""Environment variable carrying the token that opens a worker's sealed key handle."""


@dataclass(frozen=True)
class _WorkerSpec:
    """All a masking worker needs; picklable, and its sealed keys open only with the token."""

    policy: Policy
    keyring_path: str
    sealed_keys: bytes
    table: str | None
    lexicon_from: dict[str, str] = field(default_factory=dict)
    keystore: str | None = None
    #: ``BIOMASK_TEXT_WORKERS`` inside the actor: Ray is the parallelism, so no nested
    #: text-detection pool (a caller's own setting is kept)
    text_workers: str = field(default_factory=lambda: os.environ.get("BIOMASK_TEXT_WORKERS", "1"))


class _MaskBatches:
    """Runs in a Ray actor: opens the keyring there, builds the Masker once, masks batches."""

    def __init__(self, spec: _WorkerSpec, on_quarantine: str) -> None:
        from biomask.connectors import open_source
        from biomask.keys import Keyring
        from biomask.masking import Masker

        os.environ["BIOMASK_TEXT_WORKERS"] = spec.text_workers  # this process is the actor's
        services: dict[str, Any] = {"keystore_uri": spec.keystore}
        if spec.lexicon_from:
            # the text operator's known-value pre-pass reads the same input as the local
            # engine's, so names in notes get the same pseudonyms on every worker
            services["sources"] = {t: open_source(u) for t, u in spec.lexicon_from.items()}
        token = os.environ.get(WORKER_TOKEN_ENV)
        if not token:
            raise BiomaskError(
                f"this Ray worker has no {WORKER_TOKEN_ENV}: it cannot open its key handle"
            )
        ring = Keyring.from_worker_handle(spec.sealed_keys, token, spec.keyring_path)
        # one actor per core: column threads inside it would only fight its neighbours
        self.masker = Masker(spec.policy, ring, table=spec.table, services=services, threads=1)
        prepare = services.get("prepare")
        if callable(prepare) and spec.lexicon_from:
            prepare()
        self.on_quarantine = on_quarantine

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts: list[pa.Table] = []
        for rb in batch.to_batches():
            if rb.num_rows:
                parts.append(self._one(rb))
        if not parts:
            return self._empty(batch.schema)
        return pa.concat_tables(parts)

    def _one(self, rb: pa.RecordBatch) -> pa.Table:
        res = self.masker.mask_batch(rb)
        q = res.quarantine
        n_bad = q.num_rows if q is not None else 0
        if n_bad and self.on_quarantine == "fail":
            assert q is not None
            reason = q.column(q.num_columns - 1)[0].as_py()
            raise QuarantineLimitError(
                f"{n_bad} row(s) of a batch could not be masked ({reason}); "
                "on_quarantine='fail' stops the job"
            )
        out = pa.Table.from_batches([res.output])
        if self.on_quarantine == "mark":
            out = out.append_column(REASON_COLUMN, pa.nulls(out.num_rows, pa.string()))
            if q is not None and n_bad:
                out = pa.concat_tables([out, pa.Table.from_batches([q])])
        return out

    def _empty(self, schema: pa.Schema) -> pa.Table:
        out = self.masker.output_schema(schema)
        if self.on_quarantine == "mark":
            out = out.append(pa.field(REASON_COLUMN, pa.string()))
        return out.empty_table()


def _worker_env(token: str) -> dict[str, str]:
    """Environment for the actors on a cluster: the key handle's token, never the passphrase."""
    return {WORKER_TOKEN_ENV: token}


def _default_workers(ray: Any) -> int:
    if ray.is_initialized():
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, os.cpu_count() or 1)


def mask_dataset(
    ds: Any,
    policy: PolicyLike,
    keyring_path: str | os.PathLike[str],
    *,
    table: str | None = None,
    on_quarantine: Literal["mark", "fail"] = "mark",
    lexicon_from: str | Mapping[str, str] | None = None,
    keystore: str | None = None,
    concurrency: int | None = None,
    batch_size: int | None = None,
) -> Any:
    """Mask a ``ray.data.Dataset`` of one policy table on a pool of Ray actors.

    The keyring is opened here, in the driver, with ``BIOMASK_PASSPHRASE`` (a wrong
    passphrase fails now, not inside an actor). The actors get a sealed key handle as their
    argument and its token in their ``runtime_env``, never the passphrase (see the module
    docstring).

    Parameters
    ----------
    ds:
        The dataset; its columns must match the policy table (as for the local engine).
    policy:
        A :class:`~biomask.policies.Policy`, a policy file path, or a mapping.
    keyring_path:
        The keyring file each actor opens.
    table:
        The policy table the rows belong to (multi-table policies).
    on_quarantine:
        ``"mark"`` (default): keep every row, with a ``_biomask_reason`` column (null when
        masked completely). ``"fail"``: fail the job at the first quarantined row; the
        result then has exactly the policy's output columns.
    lexicon_from:
        The input URI (or ``{table: URI}`` for multi-table policies) that the ``text``
        operator's known-value pre-pass reads, as the local engine does. Without it the
        lexicon is empty: names in notes are found by NER and patterns only, and text
        output can differ from the local engine's.
    keystore:
        Where wrapped template data keys live (default ``<keyring>.keystore.sqlite``; use a
        PostgreSQL key store on a multi-node cluster).
    concurrency:
        Actors in the pool (default: the cluster's CPUs).
    batch_size:
        Rows per actor call (default: Ray's blocks as they come).

    Returns
    -------
    ray.data.Dataset
        The masked rows (lazy: nothing runs until it is consumed).
    """
    ray = _ray()
    from biomask.keys import Keyring
    from biomask.masking.api import resolve_policy

    if on_quarantine not in ("mark", "fail"):
        raise BiomaskError(f"on_quarantine must be 'mark' or 'fail', not {on_quarantine!r}")
    pol = resolve_policy(policy)
    sealed, token = Keyring.open(keyring_path).worker_handle()  # fails fast: passphrase
    if isinstance(lexicon_from, str):
        tables = list(pol.table_specs())
        lex = {table or tables[0]: lexicon_from}
    else:
        lex = dict(lexicon_from or {})
    spec = _WorkerSpec(pol, str(Path(keyring_path).resolve()), sealed, table, lex, keystore)
    return ds.map_batches(
        _MaskBatches,
        fn_constructor_args=(spec, on_quarantine),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency or _default_workers(ray)),
        num_cpus=_ACTOR_CPUS,
        runtime_env={"env_vars": _worker_env(token)},
        zero_copy_batch=True,
    )


# -- writing -------------------------------------------------------------------------------


def _split_write(
    results: Iterator[tuple[int, MaskedBatch]],
    task: int,
    out_dir: str,
    q_dir: str,
    schema: pa.Schema,
    row_group: int,
) -> dict[str, Any]:
    """Write masked rows to ``out_dir`` and quarantined ones to ``q_dir``; return the counts.

    ``results`` are ``(input rows, masked batch)`` pairs. File names depend only on
    ``task``, so a retried unit overwrites its own partial file; nothing is counted on the
    driver.
    """
    res: dict[str, Any] = {
        "task": task, "groups": [], "rows_out": 0, "rows_q": 0, "reasons": {}, "stats": {},
        "files": [],
    }  # fmt: skip
    writers: dict[str, tuple[Any, pq.ParquetWriter]] = {}

    def put(folder: str, tbl: pa.Table) -> None:
        if folder not in writers:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, _PART.format(task))
            fh = open(path, "wb")  # noqa: SIM115 - closed in the finally below
            opts = parquet_options(tbl.schema, tbl)
            writers[folder] = (fh, pq.ParquetWriter(fh, tbl.schema, **opts))
            res["files"].append(path)
        writers[folder][1].write_table(tbl, row_group_size=row_group)

    q_schema = schema.append(pa.field(REASON_COLUMN, pa.string()))
    try:
        for n, masked in results:
            bad = masked.quarantine
            n_bad = bad.num_rows if bad is not None else 0
            res["groups"].append([n, n_bad])
            for k, v in masked.stats.items():
                res["stats"][k] = res["stats"].get(k, 0) + int(v)
            good = masked.output
            if good.num_rows:
                put(out_dir, pa.Table.from_batches([good]).select(schema.names).cast(schema))
                res["rows_out"] += good.num_rows
            if bad is not None and n_bad:
                put(q_dir, pa.Table.from_batches([bad]).select(q_schema.names).cast(q_schema))
                res["rows_q"] += n_bad
                for item in pc.value_counts(bad.column(REASON_COLUMN)).to_pylist():
                    key = str(item["values"])[:120]  # reasons never hold values
                    res["reasons"][key] = res["reasons"].get(key, 0) + item["counts"]
    finally:
        for fh, writer in writers.values():
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
    return res


class _UnitWorker:
    """A Ray actor of ``biomask mask --engine ray``: reads, masks and writes whole units.

    A unit is a slice of one Parquet row group. The actor reads it from the shared file
    system, masks it batch by batch and writes its own part file, so table data never
    passes through the driver or Ray's object store; the driver only hands out units and
    sums the counts that come back.
    """

    def __init__(self, spec: _WorkerSpec) -> None:
        self.masker = _MaskBatches(spec, on_quarantine="mark").masker

    def run(
        self, task: int, unit: tuple[str, int, int, int], batch_rows: int,
        out_dir: str, q_dir: str, schema: pa.Schema,
    ) -> dict[str, Any]:  # fmt: skip
        path, row_group, offset, length = unit
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata
        data = pf.read_row_group(row_group).slice(offset, length).replace_schema_metadata(meta)

        def masked() -> Iterator[tuple[int, MaskedBatch]]:
            for rb in data.to_batches(max_chunksize=batch_rows):
                if rb.num_rows:
                    yield rb.num_rows, self.masker.mask_batch(rb)

        return _split_write(masked(), task, out_dir, q_dir, schema, batch_rows)


def _units(files: Sequence[Path], target: int) -> list[tuple[str, int, int, int]]:
    """``(file, row group, offset, rows)`` units of about ``target`` rows, in input order.

    A row group of up to twice ``target`` rows is one unit: an actor decodes a whole row
    group whatever slice of it it masks, so cutting one in two made both halves decode it
    (and halved the masking batches). On 200k captures in 25k-row groups that took the Ray
    run from 70.2–71.0 s to 66.4–68.3 s here. Larger row groups are cut into slices of at
    most ``target`` rows.
    """
    out: list[tuple[str, int, int, int]] = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            pieces = 1 if n <= 2 * target else math.ceil(n / target)
            step = math.ceil(n / pieces) if n else 0
            for k in range(pieces):
                length = min(step, n - k * step)
                if length > 0 or n == 0:
                    out.append((str(f.resolve()), rg, k * step, max(length, 0)))
    return out


# -- the driver ----------------------------------------------------------------------------


class _RayContext:
    """Connect to ``RAY_ADDRESS`` or start a quiet local Ray; shut down only what we started."""

    def __init__(self, ray: Any, token: str | None = None) -> None:
        self.ray = ray
        self.token = token
        self.started = False
        #: a Ray started here on this machine: its workers inherit the environment it was
        #: started with (the key handle's token), so actors need no runtime_env of their own
        self.local = False

    def __enter__(self) -> _RayContext:
        ray = self.ray
        # quiet: Ray's info lines are not the user's business in a CLI run; errors still
        # surface as exceptions
        logging.getLogger("ray").setLevel(logging.ERROR)
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file under HOME
            address = os.environ.get("RAY_ADDRESS") or None
            # a local Ray's processes copy this environment: the token, not the passphrase
            saved = {k: os.environ.get(k) for k in (PASSPHRASE_ENV, WORKER_TOKEN_ENV)}
            os.environ.pop(PASSPHRASE_ENV, None)
            if self.token is not None:
                os.environ[WORKER_TOKEN_ENV] = self.token
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    configure_logging=True,
                )
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            self.started = True
            self.local = address is None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.ray.shutdown()


def _unwrap(exc: BaseException) -> BaseException:
    """The biomask error inside a Ray task error, if there is one."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, BiomaskError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__
        seen += 1
    return exc


class _Cutter:
    """Re-cuts a stream of batches into batches of the requested row counts, in order."""

    def __init__(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
        self._it = iter(batches)
        self._pending: deque[pa.RecordBatch] = deque()
        self._schema = schema

    def take(self, n: int) -> pa.RecordBatch:
        parts: list[pa.RecordBatch] = []
        got = 0
        while got < n:
            if not self._pending:
                nxt = next(self._it, None)
                if nxt is None:
                    break
                self._pending.append(nxt)
            b = self._pending[0]
            if b.num_rows <= n - got:
                parts.append(self._pending.popleft())
                got += b.num_rows
            else:
                parts.append(b.slice(0, n - got))
                self._pending[0] = b.slice(n - got)
                got = n
        if got == 0:
            return pa.RecordBatch.from_pylist([], schema=self._schema)
        if len(parts) == 1:
            return parts[0]
        return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def _evidence_columns(schema: pa.Schema) -> list[str]:
    """The columns the evidence reads: all but binary and list ones (templates, mostly).

    The collector looks at strings and quasi-identifiers only; leaving the templates out
    spares the driver decoding 2 KiB a row twice (input and output) on a machine whose
    cores the actors need.
    """
    t = pa.types
    bulky = (t.is_binary, t.is_large_binary, t.is_fixed_size_binary, t.is_list,
             t.is_large_list, t.is_fixed_size_list)  # fmt: skip
    return [f.name for f in schema if not any(is_(f.type) for is_ in bulky)]


class _Evidence:
    """The dossier's evidence, on the driver, batch for batch as the local engine sees it.

    Fed unit by unit as the actors finish (in input order), so it overlaps with the
    masking still running: the workers' batches are re-cut from the input (read again) and
    from the unit's written output by the row counts the unit returned; a batch with
    quarantined rows does not line up and is counted as such by the collector, exactly as
    in a local run.
    """

    def __init__(
        self, recorder: LineageRecorder, table: str, source: Source, out_schema: pa.Schema,
        out_dir: Path, batch_size: int,
    ) -> None:  # fmt: skip
        self.recorder = recorder
        self.table = table
        in_cols = _evidence_columns(source.schema)
        in_schema = pa.schema([source.schema.field(c) for c in in_cols])
        self.ins = _Cutter(source.column_batches(in_cols), in_schema)  # type: ignore[attr-defined]
        self.out_cols = _evidence_columns(out_schema)
        self.out_schema = pa.schema([out_schema.field(c) for c in self.out_cols])
        self.out_dir = out_dir.resolve()
        self.batch_size = batch_size

    def add(self, result: dict[str, Any]) -> None:
        files = [Path(f) for f in result["files"] if Path(f).resolve().parent == self.out_dir]
        outs = _Cutter(
            chain.from_iterable(_iter_parquet(f, self.batch_size, self.out_cols) for f in files),
            self.out_schema,
        )
        for n, q in result["groups"]:
            self.recorder.observe_input(self.table, self.ins.take(int(n)))
            self.recorder.observe_output(self.table, outs.take(int(n) - int(q)))


def _input_files(source: Source, table: str) -> list[Path]:
    fmt = getattr(source, "format", None)
    files = [Path(f) for f in getattr(source, "files", [])]
    if fmt != "parquet" or not files:
        raise ConnectorError(
            f"--engine ray reads Parquet files; the input of table '{table}' is "
            f"{fmt or 'not a file'}: convert it or use --engine local"
        )
    if getattr(source, "partition_by", None):
        raise ConnectorError(
            f"--engine ray does not read hive-partitioned directories (table '{table}' is "
            f"partitioned by {', '.join(source.partition_by)}): use --engine local"  # type: ignore[attr-defined]
        )
    return files


def run_mask_ray(
    policy: Policy | str | os.PathLike[str],
    keyring: Any,
    input_uri: str,
    output_uri: str,
    *,
    lineage_dir: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 65_536,
    max_quarantine: Any = None,
    keystore: str | None = None,
    concurrency: int | None = None,
    receipt: str | None = None,
) -> RunSummary:
    """``biomask mask --engine ray``: mask Parquet input on Ray into a Parquet directory.

    Connects to ``RAY_ADDRESS`` when set, else starts a local Ray on every core (shut down
    again at the end). Output directories are committed atomically (temporary name, then
    rename); on any failure nothing appears under the final names and a FAIL event is
    recorded. On a multi-node cluster, the input, output parent, keyring and key store
    must be reachable under the same paths from every node.

    Parameters
    ----------
    policy, keyring:
        The policy (object or file) and the keyring (object or path). The keyring is
        opened here to sign the lineage; the workers open it again by path.
    input_uri, output_uri:
        A Parquet file or directory (one table), or a directory of per-table inputs for a
        multi-table policy. Each output is a directory of ``part-N.parquet`` files (a name
        ending in ``.parquet`` names that directory).
    batch_size:
        Most rows per worker call; smaller blocks are used when needed to keep every
        worker busy.
    max_quarantine:
        Fail the run (nothing committed) when more rows than this are quarantined: a row
        count or a fraction (``"1%"``, ``0.01``); default 1% of the rows, as locally.
    concurrency:
        Masking actors (default: the cluster's CPUs).
    receipt:
        A receipt of the lineage directory from an earlier run (see ``run_mask``).

    Returns
    -------
    RunSummary
        As :func:`biomask.pipeline.run_mask` returns.
    """
    ray = _ray()
    from biomask.connectors import display_uri, open_source, open_tables, quarantine_uri
    from biomask.connectors.files import ParquetDirSink
    from biomask.connectors.registry import table_sink_uri
    from biomask.keys import Keyring
    from biomask.lineage import LineageRecorder
    from biomask.lineage.record import ColumnRecord, RunRecord
    from biomask.masking import Masker
    from biomask.masking.api import resolve_policy
    from biomask.pipeline import (
        QuarantineLimit,
        RunSummary,
        _created_dirs,
        _refuse_existing_quarantine,
        check_output,
        default_lineage_dir,
        make_private,
    )

    started = time.perf_counter()
    limit = QuarantineLimit.parse(max_quarantine)
    pol = resolve_policy(policy)
    ring = keyring if isinstance(keyring, Keyring) else Keyring.open(keyring)
    if ring.path is None:
        raise BiomaskError("--engine ray needs a keyring file that every worker can open")
    keyring_path = str(Path(ring.path).resolve())
    if output_uri == "-" or "://" in output_uri:
        raise ConnectorError("--engine ray writes Parquet directories: give --output a path")
    check_output(pol, output_uri)
    specs = pol.table_specs()
    if pol.is_multi_table:
        sources = open_tables(input_uri, list(specs), batch_size=batch_size)
    else:
        (only,) = specs
        sources = {only: open_source(input_uri, batch_size=batch_size)}
    files = {t: _input_files(s, t) for t, s in sources.items()}
    services: dict[str, Any] = {"keystore_uri": keystore}
    maskers = {t: Masker(pol, ring, table=t, services=services) for t in sources}
    out_schemas = {t: maskers[t].output_schema(sources[t].schema) for t in sources}  # fail now
    out_uris = {
        t: table_sink_uri(output_uri, t, input_uri) if pol.is_multi_table else output_uri
        for t in sources
    }
    # the workers' text lexicon pre-pass reads the same inputs (absolute: a worker's
    # working directory is not the driver's)
    lex = {t: str(Path(getattr(s, "path", input_uri)).resolve()) for t, s in sources.items()}

    lineage = Path(lineage_dir) if lineage_dir else default_lineage_dir(output_uri, pol.dataset)
    created = _created_dirs(list(out_uris.values()))
    key_ids = sorted({k for m in maskers.values() for k in m.key_ids})
    record = RunRecord(
        run_id=str(uuid.uuid4()), command="mask", job=pol.dataset, policy_path=pol.source,
        policy_sha256=pol.sha256, keyring_id=ring.keyring_id, key_ids=key_ids,
        signing_key_id=ring.signing_key_id,
        inputs=[dataclasses.replace(s.ref(), table=t) for t, s in sources.items()],
    )  # fmt: skip
    record.extra["engine"] = "ray"
    for t, m in maskers.items():
        for name, op in m.operators.items():
            record.columns.append(
                ColumnRecord(
                    table=t, column=name, op=op.name, masks=op.name != "keep",
                    key_id=op.key_id, domain=getattr(op.spec, "domain", None),
                    entity=getattr(op.spec, "entity", None), dropped=not op.keeps_column,
                )
            )  # fmt: skip
            record.operator_counts[op.name] = record.operator_counts.get(op.name, 0) + 1
    out_sinks: dict[str, ParquetDirSink] = {}
    q_sinks: dict[str, ParquetDirSink] = {}
    stats: dict[str, int] = {}
    # outputs first: a refused output leaves the lineage directory as it was
    try:
        for t in sources:
            _refuse_existing_quarantine(out_uris[t], overwrite)
            meta = {k.decode(): v.decode() for k, v in (out_schemas[t].metadata or {}).items()}
            # a directory sink whatever the name: workers write its part files
            out_sinks[t] = ParquetDirSink(
                Path(out_uris[t]), out_schemas[t], overwrite=overwrite, metadata=meta,
                uri=out_uris[t],
            )  # fmt: skip
        recorder = LineageRecorder(lineage, ring, record, policy=pol, receipt=receipt)
        recorder.start()
    except BaseException:
        for s in out_sinks.values():
            try:
                s.abort()
            except Exception:  # abort must not hide the real error
                log.debug("abort failed", exc_info=True)
        raise
    try:
        sealed, token = ring.worker_handle()
        with (rctx := _RayContext(ray, token)):
            for t in sources:
                sink = out_sinks[t]
                # the sink's temporary directory (renamed on commit) is where workers write
                staging = Path(sink._tmp).resolve()
                spec = _WorkerSpec(pol, keyring_path, sealed, t, lex, keystore)
                evidence = _Evidence(recorder, t, sources[t], sink.schema, staging, batch_size)
                for r in _run_table(
                    ray, files[t], spec, sink.schema, staging, batch_size, concurrency,
                    token, inherit_env=rctx.local,
                ):  # fmt: skip
                    evidence.add(r)
                    for f in r["files"]:  # hashed now, while the actors still work
                        recorder.prehash(Path(f))
                    record.rows_out += r["rows_out"]
                    record.rows_quarantined += r["rows_q"]
                    record.rows_in += sum(n for n, _ in r["groups"])
                    for k, v in r["reasons"].items():
                        record.quarantine_reasons[k] = record.quarantine_reasons.get(k, 0) + v
                    for k, v in r["stats"].items():
                        stats[k] = stats.get(k, 0) + v
                if record.rows_in != record.rows_out + record.rows_quarantined:
                    raise BiomaskError(
                        f"row count mismatch on Ray: {record.rows_in} in, {record.rows_out} "
                        f"out, {record.rows_quarantined} quarantined; nothing was written"
                    )
                limit.check(record.rows_quarantined, record.rows_in, final=False)
                q_parts = sorted((staging / _QUARANTINE_DIR).glob("*.parquet"))
                if q_parts:
                    q_uri = quarantine_uri(out_uris[t])
                    q_schema = pq.read_schema(q_parts[0])
                    q_meta = {k.decode(): v.decode() for k, v in (q_schema.metadata or {}).items()}
                    q = ParquetDirSink(
                        Path(q_uri), q_schema, overwrite=overwrite, metadata=q_meta, uri=q_uri
                    )
                    q_sinks[t] = q
                    for p in q_parts:
                        os.replace(p, Path(q._tmp) / p.name)
                    (staging / _QUARANTINE_DIR).rmdir()
        limit.check(record.rows_quarantined, record.rows_in, final=True)
        for s in [*out_sinks.values(), *q_sinks.values()]:
            s.commit()
    except BaseException as exc:
        for s in [*out_sinks.values(), *q_sinks.values()]:
            try:
                s.abort()
            except Exception:  # abort must not hide the real error
                log.debug("abort failed", exc_info=True)
        err = _unwrap(exc)
        record.error = str(err) if isinstance(err, BiomaskError) else type(err).__name__
        recorder.fail(err)
        if err is not exc:
            raise err from None
        raise
    # the policy table each output belongs to: the key of its column lineage
    record.outputs = [dataclasses.replace(s.ref(), table=t) for t, s in out_sinks.items()]
    record.quarantine = [dataclasses.replace(s.ref(), table=t) for t, s in q_sinks.items()]
    make_private(record.quarantine)
    record.text_detections = {
        k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("text:")
    }
    recorder.complete()
    return RunSummary(
        run_id=record.run_id, rows_in=record.rows_in, rows_out=record.rows_out,
        rows_quarantined=record.rows_quarantined, seconds=time.perf_counter() - started,
        lineage_dir=lineage, outputs=[display_uri(u) for u in out_uris.values()],
        quarantine=[display_uri(quarantine_uri(out_uris[t])) for t in q_sinks],
        operator_counts=dict(record.operator_counts), stats=stats, key_ids=key_ids,
        receipt=str(recorder.receipt) if recorder.receipt is not None else None,
        created=created,
    )  # fmt: skip


def _run_table(
    ray: Any,
    files: list[Path],
    spec: _WorkerSpec,
    schema: pa.Schema,
    staging: Path,
    batch_size: int,
    concurrency: int | None,
    token: str,
    *,
    inherit_env: bool = False,
) -> Iterator[dict[str, Any]]:
    """Mask one table on a pool of Ray actors; yields the units' results in input order.

    Ray core actors rather than a Ray Data pipeline: the data goes file to actor to file,
    and the driver's only work is scheduling (on 2 cores the streaming executor, its read
    and write tasks and the object store copies took a fifth of the machine).

    ``inherit_env``: the local Ray started for this run already has the token in its
    environment (see :class:`_RayContext`), so the actors get no ``runtime_env``. One
    would make Ray start new worker processes for them instead of taking the ones it
    started with ``ray.init``.
    """
    from ray.util import ActorPool

    workers = concurrency or _default_workers(ray)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    # many units per worker, so the last ones to finish do not leave the others idle long
    rows = max(1, min(batch_size, math.ceil(total / (8 * workers)) or 1))
    units = _units(files, rows)
    if not units:
        return
    # mask each unit in as few batches as the caller's batch size allows
    rows = max(1, min(batch_size, max(u[3] for u in units)))
    options: dict[str, Any] = {"num_cpus": _ACTOR_CPUS, "max_restarts": 0}
    if not inherit_env:
        options["runtime_env"] = {"env_vars": _worker_env(token)}
    actor = ray.remote(**options)(_UnitWorker)
    actors = [actor.remote(spec) for _ in range(min(workers, len(units)))]
    out_dir, q_dir = str(staging), str(staging / _QUARANTINE_DIR)
    try:
        pool = ActorPool(actors)
        yield from pool.map(
            lambda a, job: a.run.remote(job[0], job[1], rows, out_dir, q_dir, schema),
            list(enumerate(units)),
        )
    finally:
        for a in actors:
            ray.kill(a)
