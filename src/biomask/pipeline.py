"""The one place that wires sources, the Masker, sinks and the lineage recorder into a run.

The command line, the demo and the integrations call :func:`run_mask`; nothing else opens
sinks or writes lineage. Every engine runs through it: an :class:`Executor` only moves
batches to the Masker and back (:class:`LocalExecutor` in this process; the Ray and Spark
executors in :mod:`biomask.integrations` on their workers), so planning, the pre-pass,
the quarantine limit, column lineage, evidence and the atomic commit are written once.
Order of a run:

1. open every source and bind every table's Masker to its schema, so a policy problem
   (unlisted column, wrong type) stops the run before anything is written;
2. the handshake: the Maskers declare what they need before the first batch (the text
   lexicon's columns, the key store; :meth:`Masker.needs`), :func:`read_services` reads
   it through the sources, once, and every Masker (and every remote worker) gets the
   same frozen :class:`~biomask.masking.RunServices`;
3. open every output sink (an existing output without ``overwrite``, ``append`` to a
   file, an unknown URI: refused here, before the lineage directory is touched);
4. start the lineage record: lock the directory, check its signed head, write START;
5. stream batches source -> Masker -> sink (+ quarantine sink), observing evidence;
6. check the quarantine limit (default: 1% of the rows), commit every sink atomically,
   then write COMPLETE, the run's manifest and the signed head.

On any failure after step 4 every sink is aborted (nothing appears under the final names)
and the failure is recorded as this run's own entry; earlier runs' lineage is untouched.
The error is re-raised for the caller to report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from biomask.connectors import (
    Sink,
    Source,
    display_uri,
    open_sink,
    open_source,
    open_tables,
    quarantine_uri,
    table_sink_uri,
)
from biomask.connectors.base import Partitioned, Projecting, RowEstimating
from biomask.connectors.overlap import ReadAhead, WriteBehind
from biomask.connectors.registry import data_suffix, is_postgres_uri
from biomask.errors import BiomaskError, OutputExistsError, QuarantineLimitError
from biomask.keys import Keyring
from biomask.lineage import LineageRecorder
from biomask.lineage.record import ColumnRecord, RunRecord
from biomask.masking import Masker, RunNeeds, RunServices
from biomask.masking.masker import MaskedBatch
from biomask.masking.operators.tokens import WEAK_STAT, weak_email_message
from biomask.policies import Policy

__all__ = [
    "DEFAULT_MAX_QUARANTINE",
    "Executor",
    "LocalExecutor",
    "QuarantineLimit",
    "RunSummary",
    "TableJob",
    "WorkerSpec",
    "check_output",
    "default_lineage_dir",
    "read_services",
    "run_mask",
    "run_unmask",
    "table_services",
]

#: (table, rows done so far, rows in the table when known) -> None
ProgressFn = Callable[[str, int, int | None], None]

DEFAULT_MAX_QUARANTINE = "1%"
"""Quarantine limit of a run that sets none: a run losing more than 1% of its rows fails."""


@dataclass(frozen=True)
class QuarantineLimit:
    """How many rows a run may quarantine: a count, or a fraction of the rows read.

    Built with :meth:`parse` from ``5`` (rows), ``"5"``, ``"2.5%"`` or ``0.025`` (a fraction
    below 1). A count is checked after every batch (the run stops early); a fraction once
    every row was read, before anything is committed.
    """

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, value: QuarantineLimit | int | float | str | None) -> QuarantineLimit:
        if value is None:
            value = DEFAULT_MAX_QUARANTINE
        if isinstance(value, QuarantineLimit):
            return value
        if isinstance(value, bool):
            raise BiomaskError("--max-quarantine takes a row count or a fraction, not a bool")
        if isinstance(value, int):
            if value < 0:
                raise BiomaskError(f"--max-quarantine {value}: a count cannot be negative")
            return cls(count=value)
        text = str(value).strip()
        try:
            if text.endswith("%"):
                frac = float(text[:-1]) / 100
            elif isinstance(value, float) or "." in text or "e" in text.lower():
                frac = float(text)
            else:
                return cls.parse(int(text))
        except ValueError:
            raise BiomaskError(
                f"--max-quarantine {text[:20]!r}: give a row count (50), a percentage (1%) "
                "or a fraction below 1 (0.01)"
            ) from None
        if not 0 <= frac < 1 or frac != frac:
            raise BiomaskError(
                f"--max-quarantine {text[:20]}: a fraction must be at least 0 and below 1 "
                "(use a row count for more)"
            )
        return cls(fraction=frac)

    def allowed(self, rows_in: int) -> float:
        """Rows that may be quarantined out of ``rows_in``."""
        if self.count is not None:
            return float(self.count)
        return (self.fraction or 0.0) * rows_in

    def __str__(self) -> str:
        if self.count is not None:
            return f"{self.count} rows"
        return f"{(self.fraction or 0.0) * 100:g}% of the rows"

    def check(self, quarantined: int, rows_in: int, *, final: bool) -> None:
        """Raise :class:`QuarantineLimitError` when ``quarantined`` is past the limit.

        Counts are checked on every call; fractions only when ``final`` (all rows read).
        """
        if self.count is None and not final:
            return
        if quarantined > self.allowed(rows_in):
            raise QuarantineLimitError(
                f"{quarantined} of {rows_in} rows quarantined, more than --max-quarantine "
                f"({self}); nothing was written (the reasons are in the run's lineage; "
                "raise the limit only after reading them)"
            )


@dataclass
class RunSummary:
    """What a run did, for the command line's summary and for library callers."""

    run_id: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    seconds: float
    lineage_dir: Path
    outputs: list[str]
    quarantine: list[str]
    operator_counts: dict[str, int]
    stats: dict[str, int] = field(default_factory=dict)
    key_ids: list[str] = field(default_factory=list)
    #: the lineage directory's receipt after this run (keep it outside the directory)
    receipt: str | None = None
    #: output directories that did not exist and were created for this run
    created: list[str] = field(default_factory=list)
    #: per ``email`` column, distinct addresses whose local part has a small shape (see
    #: :func:`biomask.masking.operators.tokens.weak_email_message`)
    weak_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else float("inf")

    @property
    def notes(self) -> list[str]:
        """What the user should know about the output that is no error: weakly hidden
        tokens, with the fix."""
        return [weak_email_message(c, n) for c, n in sorted(self.weak_tokens.items())]


def default_lineage_dir(output_uri: str, dataset: str) -> Path:
    """``<output>.lineage`` beside a file or directory output, so no run goes unrecorded.

    Raises
    ------
    BiomaskError
        The output is standard output or a database: there is nothing to put the
        lineage beside, and a directory named after the dataset in whatever the working
        directory happened to be is where nobody looks; the run needs ``--lineage DIR``.
    """
    if output_uri in ("-", "") or ("://" in output_uri and not output_uri.startswith("file://")):
        where = "standard output" if output_uri in ("-", "") else display_uri(output_uri)
        beside = "a pipe" if output_uri in ("-", "") else "a database table"
        raise BiomaskError(
            f"a run that writes to {where} needs --lineage DIR: its signed record cannot "
            f"go beside {beside} (e.g. --lineage {dataset}.lineage)"
        )
    if output_uri.startswith("file://"):
        from urllib.parse import urlsplit

        output_uri = urlsplit(output_uri).path
    p = Path(output_uri)
    return p.with_name(p.name.rstrip("/") + ".lineage")


def check_output(policy: Policy, output_uri: str) -> None:
    """Refuse an output that contradicts the policy before anything is written.

    A multi-table policy writes one output per table, into a directory or a database; an
    output named like one data file (``masked.parquet``) would silently become a directory
    of that name.
    """
    if not policy.is_multi_table:
        return
    suffix = data_suffix(output_uri)
    if suffix is not None or output_uri == "-":
        names = ", ".join(policy.table_specs())
        what = "standard output" if output_uri == "-" else f"{output_uri} (a {suffix} file)"
        raise BiomaskError(
            f"the policy names {len(policy.table_specs())} tables ({names}): --output must be "
            f"a directory (one file per table) or a postgresql:// URI, not {what}"
        )


def _created_dirs(uris: list[str]) -> list[str]:
    """The outermost missing directory above each file output: what the run will create."""
    out: list[str] = []
    for uri in uris:
        if uri == "-" or is_postgres_uri(uri) or "://" in uri:
            continue
        parent = Path(uri.rstrip("/")).parent
        top = None
        while not parent.exists() and parent != parent.parent:
            top, parent = parent, parent.parent
        if top is not None and str(top) not in out:
            out.append(str(top))
    return out


# -- engines ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """All a remote worker needs to build a table's Masker; picklable, holds no usable key.

    ``sealed_keys`` is :meth:`Keyring.worker_handle`'s sealed half; the token that opens it
    reaches workers separately (their environment), so neither the work's arguments nor
    the environment alone hold a key, and the passphrase never leaves the driver.
    ``services`` is the run's own :class:`RunServices` (the columns the Masker declared,
    read once by the pipeline; the key store): workers prepare the same Masker as the
    driver without reading the input.
    """

    policy: Policy
    sealed_keys: bytes
    table: str
    keyring_path: str | None = None
    services: RunServices = field(default_factory=RunServices)
    unmask: bool = False
    #: ``BIOMASK_TEXT_WORKERS`` inside a worker: the engine is the parallelism, so no
    #: nested text-detection pool (a caller's own setting is kept)
    text_workers: str = field(default_factory=lambda: os.environ.get("BIOMASK_TEXT_WORKERS", "1"))

    def masker(self, token: str) -> Masker:
        """The worker's Masker, prepared (one column thread: the engine is the parallelism)."""
        from biomask.masking import Unmasker

        os.environ["BIOMASK_TEXT_WORKERS"] = self.text_workers  # this process is the worker's
        ring = Keyring.from_worker_handle(self.sealed_keys, token, self.keyring_path)
        cls = Unmasker if self.unmask else Masker
        masker = cls(self.policy, ring, table=self.table, threads=1)
        masker.prepare(self.services)
        return masker


@dataclass
class TableJob:
    """One table of a run as an executor sees it.

    ``masker`` is the driver's own (the local engine masks with it); ``spec`` builds an
    equal one on a remote worker (None when the executor is not remote).
    """

    table: str
    masker: Masker
    spec: WorkerSpec | None = None


class Executor(Protocol):
    """Moves batches through a table's Masker; everything else belongs to the pipeline.

    ``map`` yields ``(input batch, masked batch)`` in input order, whatever runs the
    Masker, so the pipeline's sinks, evidence and counts see the same stream on every
    engine and the outputs are byte-identical (template nonces aside).
    """

    #: the engine's name, recorded in lineage (``engine`` in the biomask facet)
    name: str
    #: whether the Masker runs in other processes: the pipeline then seals a key handle
    remote: bool
    #: a token the engine's workers already hold (a running Spark session's environment
    #: is fixed when it starts): the pipeline seals the key handle under it; else None
    worker_token: str | None

    def open(self, token: str | None) -> None:
        """Start the engine; ``token`` opens the sealed key handle on remote workers."""

    def map(
        self, job: TableJob, batches: Iterator[pa.RecordBatch]
    ) -> Iterator[tuple[pa.RecordBatch, MaskedBatch]]:
        """Mask ``batches`` with ``job``'s Masker, in order."""
        ...

    def close(self) -> None:
        """Release what :meth:`open` started (also after a failure)."""


class LocalExecutor:
    """This process: the Masker's column threads and the pipeline's read/write threads."""

    name = "local"
    remote = False
    worker_token: str | None = None

    def open(self, token: str | None) -> None:
        return None

    def map(
        self, job: TableJob, batches: Iterator[pa.RecordBatch]
    ) -> Iterator[tuple[pa.RecordBatch, MaskedBatch]]:
        for batch in batches:
            yield batch, job.masker.mask_batch(batch)

    def close(self) -> None:
        return None


def read_services(
    sources: Mapping[str, Source], needs: RunNeeds, *, keystore: str | None = None
) -> RunServices:
    """Read what the Maskers declared (:meth:`Masker.needs`), once, through the sources.

    Only the declared columns are read (a projection where the source can push it down:
    Parquet, Arrow, PostgreSQL). A source that cannot be read twice (standard input) is
    not read here: it is named in :attr:`RunServices.unreadable`, and the lexicon says it
    skipped it. The key store URI is kept only when some rule uses a key store.
    Every engine's workers receive the result as it is, so none of them reads the input.
    """
    tables: dict[str, pa.Table] = {}
    unreadable: set[str] = set()
    for table, cols in needs.preread.items():
        source = sources.get(table)
        if source is None:
            continue
        if not _rereadable(source):
            unreadable.add(table)
            continue
        present = [c for c in cols if c in source.schema.names]
        if not present:
            continue
        if isinstance(source, Projecting):
            batches = source.column_batches(present)
        else:
            batches = (b.select(present) for b in source.batches())
        schema = pa.schema([source.schema.field(c) for c in present])
        tables[table] = pa.Table.from_batches(list(batches), schema=schema)
    return RunServices(
        tables, frozenset(unreadable), keystore_uri=keystore if needs.keystore else None
    )


def table_services(
    policy: Policy,
    keyring: Keyring,
    table: str,
    *,
    lexicon_from: str | Mapping[str, str] | None = None,
    keystore: str | None = None,
) -> RunServices:
    """The services of one table masked outside :func:`run_mask` (a Ray or Spark dataset).

    The same handshake as a run: the table's Masker declares its needs and the declared
    columns are read from ``lexicon_from`` (an input URI, or ``{table: URI}`` for the
    tables of a multi-table policy). Without it the lexicon has no known values: names in
    notes are then found by NER and patterns only.
    """
    uris = {table: lexicon_from} if isinstance(lexicon_from, str) else dict(lexicon_from or {})
    needs = Masker(policy, keyring, table=table).needs()
    return read_services({t: open_source(u) for t, u in uris.items()}, needs, keystore=keystore)


def _rereadable(source: Any) -> bool:
    """Whether ``source`` can be read again for the pre-read (standard input cannot)."""
    try:
        return str(source.ref().uri) != "-"
    except Exception:  # a source that cannot even name itself is not read twice
        return False


def run_mask(
    policy: Policy,
    keyring: Keyring,
    input_uri: str,
    output_uri: str,
    *,
    lineage_dir: str | Path | None = None,
    overwrite: bool = False,
    append: bool = False,
    batch_size: int = 65_536,
    max_quarantine: QuarantineLimit | int | float | str | None = None,
    progress: ProgressFn | None = None,
    command: str = "mask",
    masker_factory: Callable[[Policy, Keyring, str], Masker] | None = None,
    keystore: str | None = None,
    receipt: str | None = None,
    engine: Executor | None = None,
) -> RunSummary:
    """Mask ``input_uri`` into ``output_uri`` under ``policy``; see the module docstring.

    Parameters
    ----------
    max_quarantine:
        Fail the run (nothing committed) when more rows than this are quarantined: a row
        count, or a fraction (``"1%"``, ``0.01``); default 1% of the rows read.
    progress:
        Called with (table, rows done so far, the table's row count when the source knows
        it: Parquet footers, PostgreSQL statistics) when a table starts and after each of
        its batches.
    masker_factory:
        Builds the per-table masker; ``unmask`` passes its own.
    keystore:
        Where wrapped template data keys live (default: ``<keyring>.keystore.sqlite``).
    receipt:
        A receipt of the lineage directory kept from an earlier run: the run is refused
        unless the directory is that state or grew from it (no rollback).
    engine:
        What moves the batches through the Masker (default: :class:`LocalExecutor`;
        :func:`biomask.integrations.executor` names the others). Everything else in the
        run is the same.
    """
    started = time.perf_counter()
    limit = QuarantineLimit.parse(max_quarantine)
    check_output(policy, output_uri)
    lineage = Path(lineage_dir) if lineage_dir else default_lineage_dir(output_uri, policy.dataset)
    specs = policy.table_specs()
    out_uris = {
        t: table_sink_uri(output_uri, t, input_uri) if policy.is_multi_table else output_uri
        for t in specs
    }
    created = _created_dirs(list(out_uris.values()))  # before lineage makes any of them
    if policy.is_multi_table:
        sources: dict[str, Source] = open_tables(input_uri, list(specs), batch_size=batch_size)
    else:
        (only,) = specs
        sources = {only: open_source(input_uri, batch_size=batch_size)}
    factory = masker_factory or (lambda p, k, t: Masker(p, k, table=t))
    maskers = {t: factory(policy, keyring, t) for t in sources}
    out_schemas = {t: maskers[t].output_schema(sources[t].schema) for t in sources}
    # The handshake: the Maskers declare what they need (the text lexicon's columns, the
    # key store), it is read here, once, and handed to every table's Masker in one object;
    # remote workers get the same object with their spec.
    unmask = command == "unmask"
    services = read_services(
        sources, RunNeeds.union(m.needs() for m in maskers.values()), keystore=keystore
    )
    for m in maskers.values():
        m.prepare(services)
    executor: Executor = engine if engine is not None else LocalExecutor()

    key_ids = sorted({k for m in maskers.values() for k in m.key_ids})
    record = RunRecord(
        run_id=str(uuid.uuid4()),
        command=command,
        job=policy.dataset,
        policy_path=policy.source,
        policy_sha256=policy.sha256,
        keyring_id=keyring.keyring_id,
        key_ids=key_ids,
        signing_key_id=keyring.signing_key_id,
        inputs=[dataclasses.replace(s.ref(), table=t) for t, s in sources.items()],
    )
    if executor.name != "local":
        record.extra["engine"] = executor.name
    jobs = {t: TableJob(t, m) for t, m in maskers.items()}
    for t, m in maskers.items():
        for name, op in m.operators.items():
            spec = op.spec
            record.columns.append(
                ColumnRecord(
                    table=t,
                    column=name,
                    op=op.name,
                    masks=op.name != "keep",
                    key_id=op.key_id,
                    domain=getattr(spec, "domain", None),
                    entity=getattr(spec, "entity", None),
                    dropped=not op.keeps_column,
                )
            )
            record.operator_counts[op.name] = record.operator_counts.get(op.name, 0) + 1
    readers: dict[str, ReadAhead] = {}
    sinks: list[Sink] = []
    q_sinks: dict[str, Sink] = {}
    outputs: list[str] = []
    q_uris: list[str] = []
    stats: dict[str, int] = {}
    out_sinks: dict[str, Sink] = {}
    # Outputs are opened before the lineage directory is touched: an existing output, an
    # append to a file or an unknown URI refuses the run with the lineage as it was.
    try:
        # The first table's first batch decodes on the reader's thread while the outputs
        # open and the lineage starts (checking the signed head, hashing the inputs):
        # reading writes nothing, and masking needs that batch before it can begin.
        for t in list(sources)[:1]:
            readers[t] = ReadAhead(sources[t].batches())
        for t in sources:
            uri = out_uris[t]
            _refuse_existing_quarantine(uri, overwrite)
            # encoded and compressed on its own thread while the next batch is masked
            sink: Sink = WriteBehind(
                open_sink(
                    uri,
                    out_schemas[t],
                    overwrite=overwrite,
                    append=append,
                    metadata=_meta(out_schemas[t]),
                    partition_by=_partitions(sources[t], out_schemas[t]),
                )
            )
            out_sinks[t] = sink
            sinks.append(sink)
            outputs.append(display_uri(uri))
        token = None
        if executor.remote:
            sealed, token = keyring.worker_handle(token=executor.worker_token)
            path = str(Path(keyring.path).resolve()) if keyring.path is not None else None
            for t, job in jobs.items():
                job.spec = WorkerSpec(policy, sealed, t, path, services, unmask)
        recorder = LineageRecorder(lineage, keyring, record, policy=policy, receipt=receipt)
    except BaseException:
        for r in readers.values():
            r.close()
        for s in sinks:
            with contextlib.suppress(Exception):
                s.abort()
        raise

    # The lineage starts (lock, signed head checked, inputs hashed, START written) on the
    # evidence thread while the first batch is masked: most of it waits on fsync, and
    # masking writes nothing that commits. The first masked batch waits for it, so a
    # refused directory still stops the run before any count is recorded or anything is
    # committed.
    evidence = _Evidence(recorder)
    try:
        executor.open(token)
        for t, source in sources.items():
            done = 0
            total = source.row_estimate() if isinstance(source, RowEstimating) else None
            if progress is not None:
                progress(t, 0, total)
            reader = readers.get(t) or readers.setdefault(t, ReadAhead(source.batches()))
            # the next batch decodes on the reader's thread meanwhile
            for batch, res in executor.map(jobs[t], iter(reader)):
                evidence.started()
                evidence.submit(t, batch, res.output)
                record.rows_in += batch.num_rows
                out_sinks[t].write(res.output)
                record.rows_out += res.output.num_rows
                if res.quarantine is not None and res.quarantine.num_rows:
                    q = q_sinks.get(t)
                    if q is None:
                        q_uri = quarantine_uri(out_uris[t], lineage_dir=lineage)
                        q = open_sink(q_uri, res.quarantine.schema, overwrite=overwrite)
                        q_sinks[t] = q
                        sinks.append(q)
                        q_uris.append(display_uri(q_uri))
                    q.write(res.quarantine)
                    record.rows_quarantined += res.quarantine.num_rows
                    for reason in res.quarantine.column(res.quarantine.num_columns - 1).to_pylist():
                        key = _reason_kind(str(reason))
                        record.quarantine_reasons[key] = record.quarantine_reasons.get(key, 0) + 1
                    limit.check(record.rows_quarantined, record.rows_in, final=False)
                for k, v in res.stats.items():
                    stats[k] = stats.get(k, 0) + v
                done += batch.num_rows
                if progress is not None:
                    progress(t, done, total)
        evidence.started()
        limit.check(record.rows_quarantined, record.rows_in, final=True)
        # The residual-PII scan and the other end-of-run evidence run on the evidence
        # thread while the last batches are encoded; both finish before anything commits.
        evidence.conclude()
        for s in sinks:
            if isinstance(s, WriteBehind):
                s.flush()
        evidence.drain()
        for s in sinks:
            if isinstance(s, WriteBehind):
                s.commit(on_sealed=recorder.prehash_open)
            else:
                s.commit()
    except BaseException as exc:
        for r in readers.values():  # stop reading ahead
            r.close()
        evidence.drain(cancel=True)
        for s in sinks:
            with contextlib.suppress(Exception):  # abort must not hide the real error
                s.abort()
        with contextlib.suppress(Exception):
            executor.close()
        refused = evidence.start_error()
        if refused is not None:  # the lineage refused the run: nothing of it is recorded
            if refused is exc:
                raise
            raise refused from None
        err = _unwrap(exc)
        record.error = str(err) if isinstance(err, BiomaskError) else type(err).__name__
        record.ended_at = _now()
        recorder.fail(err)
        if err is not exc:
            raise err from None
        raise
    executor.close()
    # the policy table each output belongs to: the key of its column lineage
    record.outputs = [dataclasses.replace(s.ref(), table=t) for t, s in out_sinks.items()]
    record.quarantine = [dataclasses.replace(s.ref(), table=t) for t, s in q_sinks.items()]
    make_private(record.quarantine)
    record.text_detections = {
        k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("text:")
    }
    record.weak_tokens = {
        k[len(WEAK_STAT) :]: v for k, v in stats.items() if k.startswith(WEAK_STAT)
    }
    record.ended_at = _now()
    recorder.complete()
    return RunSummary(
        run_id=record.run_id,
        rows_in=record.rows_in,
        rows_out=record.rows_out,
        rows_quarantined=record.rows_quarantined,
        seconds=time.perf_counter() - started,
        lineage_dir=lineage,
        outputs=outputs,
        quarantine=q_uris,
        operator_counts=dict(record.operator_counts),
        stats=stats,
        key_ids=key_ids,
        receipt=str(recorder.receipt) if recorder.receipt is not None else None,
        created=created,
        weak_tokens=dict(sorted(record.weak_tokens.items())),
    )


def _unwrap(exc: BaseException) -> BaseException:
    """The biomask error inside an engine's wrapper (a Ray task error, a Spark Py4J error).

    A Ray task error is an instance of the error it wraps (Ray subclasses it) and its text
    is the worker's traceback, so the error in its ``cause`` is taken first.
    """
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        inner = getattr(cur, "cause", None)
        if isinstance(inner, BaseException):
            cur = inner
        elif isinstance(cur, BiomaskError):
            return cur
        else:
            cur = cur.__cause__
        seen += 1
    return exc


def _refuse_existing_quarantine(uri: str, overwrite: bool) -> None:
    """An existing quarantine output refuses the run before it starts, as its output does."""
    if overwrite or uri in ("-", "") or "://" in uri:
        return
    q = Path(quarantine_uri(uri))
    if q.exists():
        raise OutputExistsError(
            f"quarantine output {q} exists: pass --overwrite to replace it, or remove it"
        )


def make_private(refs: list[Any]) -> None:
    """Quarantined rows are unmasked where masking failed: files 0600, directories 0700."""
    for ref in refs:
        for f in ref.files:
            with contextlib.suppress(OSError):
                os.chmod(f, 0o600)
                parent = Path(f).parent
                if parent.name.endswith(".quarantine") or parent.name == ".quarantine":
                    os.chmod(parent, 0o700)


class _Evidence:
    """Runs the lineage evidence collectors on one background thread.

    The collectors (quasi-identifier counts, residual-PII scan) cost about as much as the
    masking itself; on their own thread they overlap with masking and writing the next
    batch. One worker keeps them in batch order and thread-confined; at most two batches
    wait, so memory stays bounded by the batch size.
    """

    def __init__(self, recorder: LineageRecorder) -> None:
        self._recorder = recorder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="biomask-evidence")
        self._pending: deque[Future[None]] = deque()
        # the first task: everything the recorder observes comes after its start
        self._start = self._pool.submit(recorder.start)

    def started(self) -> None:
        """Wait until the lineage has started; raises its refusal (a held lock, a head
        that does not match)."""
        self._start.result()

    def start_error(self) -> BaseException | None:
        """The error the lineage start raised, once the evidence thread has stopped; None
        when it started, or never ran (then :meth:`LineageRecorder.fail` starts it)."""
        if not self._start.done() or self._start.cancelled():
            return None
        return self._start.exception()

    def _observe(self, table: str, before: pa.RecordBatch, after: pa.RecordBatch) -> None:
        self._recorder.observe_input(table, before)
        self._recorder.observe_output(table, after)

    def submit(self, table: str, before: pa.RecordBatch, after: pa.RecordBatch) -> None:
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._observe, table, before, after))

    def conclude(self) -> None:
        """Queue the end-of-run evidence (:meth:`LineageRecorder.conclude_evidence`)."""
        self._pending.append(self._pool.submit(self._recorder.conclude_evidence))

    def drain(self, *, cancel: bool = False) -> None:
        try:
            while self._pending:
                fut = self._pending.popleft()
                if cancel:
                    fut.cancel()
                else:
                    fut.result()
        finally:
            if cancel or not self._pending:
                self._pool.shutdown(wait=True, cancel_futures=cancel)


def _partitions(source: Source, schema: pa.Schema) -> tuple[str, ...]:
    """Hive partition columns of the input that survive masking (kept on output)."""
    cols = tuple(source.partition_by) if isinstance(source, Partitioned) else ()
    return tuple(c for c in cols if c in schema.names)


def _meta(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def _reason_kind(reason: str) -> str:
    # "column: what" -> keep it coarse; reasons never hold values
    return reason[:120]


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def run_unmask(
    policy: Policy,
    keyring: Keyring,
    input_uri: str,
    output_uri: str,
    **kwargs: Any,
) -> RunSummary:
    """Reverse the reversible columns of masked data (FF1 tokens, encrypted templates).

    Every other column is left as it is. The run is recorded in lineage as an access
    event (``command: unmask``): reading the originals back is itself evidence.
    """
    from biomask.masking import Unmasker

    return run_mask(
        policy,
        keyring,
        input_uri,
        output_uri,
        command="unmask",
        masker_factory=lambda p, k, t: Unmasker(p, k, table=t),
        **kwargs,
    )


def run_upgrade_templates(
    policy: Policy,
    keyring: Keyring,
    input_uri: str,
    output_uri: str,
    **kwargs: Any,
) -> RunSummary:
    """Rewrite masked data's template columns in the current format (``rekey --upgrade``).

    Version 1 ciphertexts (no row binding) become version 2, bound to the policy's
    ``row_key``; every other column is copied. Recorded in lineage (``command:
    rekey-upgrade``), as reading templates back is.
    """
    from biomask.masking.masker import TemplateUpgrader

    return run_mask(
        policy,
        keyring,
        input_uri,
        output_uri,
        command="rekey-upgrade",
        masker_factory=lambda p, k, t: TemplateUpgrader(p, k, table=t),
        **kwargs,
    )
