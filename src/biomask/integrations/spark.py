"""Mask on Spark: the same Masker, run by Spark's Python workers through ``mapInArrow``.

Two entry points:

* :class:`SparkExecutor` is ``biomask mask --engine spark``: an
  :class:`~biomask.pipeline.Executor` that only moves batches. The pipeline reads, writes,
  checks the quarantine limit, records lineage and commits, as for every engine. The
  executor sends a window of batches to Spark as Arrow IPC (one row per batch, so Spark's
  type conversions never touch the data), masks each with ``mapInArrow`` and hands the
  masked batches back in input order: the output equals the local engine's byte for byte
  (template nonces aside).
* :func:`mask_dataframe` masks a Spark ``DataFrame`` of one policy table and returns a
  DataFrame with the policy's output columns and a ``_biomask_reason`` column (null for a
  row masked completely), the quarantine choice of :func:`biomask.integrations.ray.mask_dataset`.

Keys reach the workers as on Ray: a sealed key handle travels with the function, its token
in the workers' environment (``BIOMASK_WORKER_TOKEN``), and the session's JVM is started
without ``BIOMASK_PASSPHRASE`` in its environment. :func:`local_session` builds such a
session (``local[2]`` by default, no UI, no network, quiet logs). On a local master the
token is in the JVM's environment when it starts, which its Python workers inherit, never
on its command line: PySpark passes every session setting to ``spark-submit`` as a
``--conf`` argument, which any user of the machine can read with ``ps``. The session
records only a fingerprint of the token (``spark.biomask.workerTokenId``). A cluster
master has no shared environment: there the token travels as
``spark.executorEnv.BIOMASK_WORKER_TOKEN``, visible on the driver's command line.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from biomask.errors import BiomaskError, MissingDependencyError
from biomask.integrations.ray import WORKER_TOKEN_ENV, worker_masker
from biomask.keys.keyring import PASSPHRASE_ENV
from biomask.masking.masker import REASON_COLUMN, MaskedBatch

if TYPE_CHECKING:
    from biomask.keys import Keyring
    from biomask.masking.api import PolicyLike
    from biomask.pipeline import TableJob, WorkerSpec

__all__ = ["SparkExecutor", "local_session", "mask_dataframe", "new_token"]

_TOKEN_CONF = f"spark.executorEnv.{WORKER_TOKEN_ENV}"
_TOKEN_ID_CONF = "spark.biomask.workerTokenId"
#: tokens of the local sessions this process started, by fingerprint (never in a conf)
_TOKENS: dict[str, str] = {}
_LOG4J = (
    "rootLogger.level = error\nrootLogger.appenderRef.stderr.ref = console\n"
    "appender.console.type = Console\nappender.console.name = console\n"
    "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
    # PySpark's gateway counts as an interactive shell: without a level of its own Spark
    # lowers the console to WARN and prints two lines saying so
    "logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer\n"
    "logger.gateway.level = error\n"
)
#: what the JVM prints on its standard error while it starts, whatever the log4j setup: the
#: JDK's notice of the incubator module Spark loads, Spark's shell-level notice, Hadoop's
#: note that it found no native library. Nothing in them concerns the run.
_STARTUP_NOISE = re.compile(
    rb"^(?:WARNING: Using incubator modules|Setting default log level|"
    rb"To adjust logging level use sc\.setLogLevel|.*\bWARN NativeCodeLoader\b)"
)


def _pyspark() -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise MissingDependencyError(
            "the Spark engine needs PySpark and a Java runtime: pip install 'biomask[spark]'"
        ) from None
    return SparkSession


def _pump(read_fd: int, out: dict[str, int], lock: threading.Lock) -> None:
    """Copy the JVM's standard error to ours, line by line, without its startup noise."""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        for line in iter(pipe.readline, b""):
            if _STARTUP_NOISE.match(line):
                continue
            with lock, contextlib.suppress(OSError):
                os.write(out["fd"], line)


@contextlib.contextmanager
def _jvm_stderr_filtered() -> Iterator[None]:
    """Start the JVM inside this block with its standard error going through :func:`_pump`.

    PySpark starts the JVM as a child that inherits file descriptor 2, and some of its
    startup lines are printed before (or beside) any logging setup: no Spark setting turns
    them off. So while the JVM starts, descriptor 2 is a pipe; the JVM keeps that pipe as
    its standard error for its whole life and a thread passes every other line on (errors
    of the run still reach the terminal). This process's descriptor 2 is restored on exit.
    Nothing is done when the JVM already runs or descriptor 2 cannot be duplicated.
    """
    from pyspark import SparkContext

    if SparkContext._gateway is not None or os.name != "posix":
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    read_fd, write_fd = os.pipe()
    lock = threading.Lock()
    out = {"fd": saved}  # while fd 2 is the pipe, lines go to the real stderr
    threading.Thread(
        target=_pump, args=(read_fd, out, lock), name="biomask-spark-stderr", daemon=True
    ).start()
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        with lock:
            os.dup2(saved, 2)
            out["fd"] = 2
            os.close(saved)


def new_token() -> str:
    """A fresh worker token for :func:`local_session` (32 random bytes, base64)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _token_id(token: str) -> str:
    """A fingerprint of ``token`` that names it in a session's settings without holding it."""
    import hashlib

    return hashlib.sha256(b"biomask worker token id\0" + token.encode()).hexdigest()[:32]


def session_token(conf: Any) -> str | None:
    """The worker token of the session whose ``SparkConf`` is ``conf``, or None.

    A session from :func:`local_session` names its token by fingerprint only; the token is
    then known to this process. Otherwise it is the session's
    ``spark.executorEnv.BIOMASK_WORKER_TOKEN``.
    """
    tid = conf.get(_TOKEN_ID_CONF)
    if tid and tid in _TOKENS:
        return _TOKENS[tid]
    token = conf.get(_TOKEN_CONF)
    return str(token) if token else None


def local_session(token: str, *, master: str = "local[2]") -> Any:
    """A local Spark session whose Python workers hold ``token`` and never the passphrase.

    ``token`` opens the sealed key handles this session's jobs carry (see the module
    docstring). Logs are quiet (errors only; the JVM's startup lines never reach the
    terminal, see :func:`_jvm_stderr_filtered`), the UI is off and Spark binds to the
    loopback interface only. An active session is reused only if it was built with the
    same token: its workers' environment is fixed once they start.
    """
    session = _pyspark()
    # PySpark warns on every pandas-backed call that it does not yet support pandas 3;
    # biomask hands it Arrow, so the warning is noise in a CLI run
    warnings.filterwarnings("ignore", message="PySpark does not yet", category=FutureWarning)
    active = session.getActiveSession()
    if active is not None:
        if session_token(active.sparkContext.getConf()) == token:
            return active
        raise BiomaskError(
            "a Spark session is already running with other worker keys: stop it first, "
            "or mask with mask_dataframe() on a session from local_session()"
        )
    log4j = _log4j_file()
    quiet = f"-Dlog4j.configurationFile=file:{log4j} -Dlog4j2.configurationFile=file:{log4j}"
    # the JVM and the Python workers it forks copy this environment: never the passphrase;
    # on a local master the worker token, which the JVM keeps and this process drops again
    saved = os.environ.pop(PASSPHRASE_ENV, None)
    local = master.startswith("local")
    had_token = os.environ.get(WORKER_TOKEN_ENV)
    if local:
        os.environ[WORKER_TOKEN_ENV] = token
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.getLogger("py4j").setLevel(logging.ERROR)  # its connection notices
    tid = _token_id(token)
    try:
        with _jvm_stderr_filtered():
            builder = (
                session.builder.master(master)
                .appName("biomask")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                # the workers run this interpreter: it has biomask and its dependencies
                .config("spark.pyspark.python", sys.executable)
                .config("spark.pyspark.driver.python", sys.executable)
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.driver.extraJavaOptions", quiet)
                .config("spark.sql.shuffle.partitions", "2")
                .config(_TOKEN_ID_CONF, tid)
            )
            if not local:  # no shared environment: the setting is the only way there
                builder = builder.config(_TOKEN_CONF, token)
            spark = builder.getOrCreate()
    finally:
        if saved is not None:
            os.environ[PASSPHRASE_ENV] = saved
        if had_token is None:
            os.environ.pop(WORKER_TOKEN_ENV, None)
        else:
            os.environ[WORKER_TOKEN_ENV] = had_token
    _TOKENS[tid] = token
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _log4j_file() -> str:
    """The JVM's log configuration: one file per process, removed when the process ends."""
    global _LOG4J_PATH
    if _LOG4J_PATH is None or not os.path.exists(_LOG4J_PATH):
        folder = tempfile.mkdtemp(prefix="biomask-spark-")
        path = os.path.join(folder, "log4j2.properties")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_LOG4J)
        atexit.register(shutil.rmtree, folder, True)
        _LOG4J_PATH = path
    return _LOG4J_PATH


_LOG4J_PATH: str | None = None


# -- workers -------------------------------------------------------------------------------

_MASKERS: dict[tuple[bytes, str], Any] = {}


def _masker(spec: WorkerSpec) -> Any:
    """One Masker per spec and Python worker process (Spark reuses its workers)."""
    key = (spec.sealed_keys, spec.table)
    if key not in _MASKERS:
        _MASKERS.clear()  # another run's: keep one
        _MASKERS[key] = worker_masker(spec)
    return _MASKERS[key]


def _ipc(batch: pa.RecordBatch | None) -> bytes | None:
    if batch is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _unipc(blob: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(blob).read_next_batch()


_WIRE = "seq long, output binary, quarantine binary, stats string, error string"
#: largest batch (Arrow bytes) sent to Spark as one row; larger ones go as row slices
ROW_BYTES = 16 << 20
#: most Arrow bytes one Spark job carries through the driver JVM
WINDOW_BYTES = 64 << 20


def _slices(batch: pa.RecordBatch, limit: int) -> Iterator[pa.RecordBatch]:
    """``batch`` as consecutive row slices of about ``limit`` bytes at most (zero-copy)."""
    size = batch.nbytes
    if size <= limit or batch.num_rows < 2:
        yield batch
        return
    parts = min(batch.num_rows, -(-size // limit))
    step = -(-batch.num_rows // parts)
    for start in range(0, batch.num_rows, step):
        yield batch.slice(start, step)


def _error_row(exc: BiomaskError) -> str:
    """A biomask error raised in a worker, as the wire carries it back to the driver."""
    from biomask.errors import PolicyError

    row: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, PolicyError):
        row.update(message=exc.message, path=exc.path, line=exc.line, field=exc.field)
    return json.dumps(row)


def _raise_error_row(text: str) -> None:
    """Raise in the driver the biomask error a worker sent (:func:`_error_row`).

    Spark would report a failed task as its own exception whose text is the worker's
    traceback; sent in band, the error reaches the user as the one line the local engine
    prints, and the JVM logs no failed task.
    """
    from biomask import errors

    row = json.loads(text)
    found = getattr(errors, str(row.get("type")), None)
    cls: type[BiomaskError] = (
        found if isinstance(found, type) and issubclass(found, BiomaskError) else BiomaskError
    )
    if issubclass(cls, errors.PolicyError):
        policy_error: type[errors.PolicyError] = cls
        raise policy_error(row["message"], path=row["path"], line=row["line"], field=row["field"])
    if issubclass(cls, errors.DecryptionError):
        raise errors.DecryptionError()
    raise cls(row["message"])


def _mask_wire(spec: WorkerSpec) -> Any:
    """The ``mapInArrow`` function of the executor: IPC batch in, IPC masked batch out.

    A :class:`~biomask.errors.BiomaskError` (a policy that does not fit the data, a key
    store that is missing) is returned in the ``error`` column instead of failing the
    task; anything else fails it, as a bug should.
    """

    def run(parts: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        masker = _masker(spec)
        for part in parts:
            seqs, blobs = part.column(0).to_pylist(), part.column(1).to_pylist()
            try:
                res = [masker.mask_batch(_unipc(b)) for b in blobs]
            except BiomaskError as exc:
                n = len(seqs)
                yield pa.record_batch({
                    "seq": pa.array(seqs, pa.int64()),
                    "output": pa.nulls(n, pa.binary()),
                    "quarantine": pa.nulls(n, pa.binary()),
                    "stats": pa.nulls(n, pa.string()),
                    "error": pa.array([_error_row(exc)] * n, pa.string()),
                })  # fmt: skip
                continue
            yield pa.record_batch({
                "seq": pa.array(seqs, pa.int64()),
                "output": pa.array([_ipc(r.output) for r in res], pa.binary()),
                "quarantine": pa.array([_ipc(r.quarantine) for r in res], pa.binary()),
                "stats": pa.array([json.dumps(r.stats) for r in res], pa.string()),
                "error": pa.nulls(len(res), pa.string()),
            })  # fmt: skip

    return run


class SparkExecutor:
    """``--engine spark``: the pipeline's batches masked by Spark's Python workers, in order.

    Batches go to Spark in windows of a few per core; each window is one Spark job of
    ``mapInArrow`` over one row per batch. A batch travels through the driver JVM as one
    binary value, in and out, so the JVM's heap (PySpark's default: 1 GiB) bounds what a
    window may hold: a batch larger than :data:`ROW_BYTES` goes as row slices of at most
    that size, and a window holds at most :data:`WINDOW_BYTES`. Tokens are per value, so
    the slices mask to the same bytes; only the pipeline sees more, smaller batches.

    Parameters
    ----------
    master:
        The Spark master (default ``local[2]``: this machine, two worker threads).
    """

    name = "spark"
    remote = True

    def __init__(self, master: str = "local[2]") -> None:
        self.master = master
        self._spark: Any = None
        self._started = False
        active = _pyspark().getActiveSession()
        #: a running session's workers hold its token already: the run seals under it
        self.worker_token: str | None = (
            session_token(active.sparkContext.getConf()) if active is not None else None
        )

    def open(self, token: str | None) -> None:
        if token is None:
            raise BiomaskError("the Spark engine needs a key handle token for its workers")
        had = _pyspark().getActiveSession() is not None
        self._spark = local_session(token, master=self.master)
        self._started = not had

    def map(
        self, job: TableJob, batches: Iterator[pa.RecordBatch]
    ) -> Iterator[tuple[pa.RecordBatch, MaskedBatch]]:
        assert job.spec is not None and self._spark is not None
        cores = max(1, int(self._spark.sparkContext.defaultParallelism))
        window: list[pa.RecordBatch] = []
        held = 0
        for batch in batches:
            for part in _slices(batch, ROW_BYTES):
                if window and (len(window) >= 2 * cores or held + part.nbytes > WINDOW_BYTES):
                    yield from self._run(job.spec, window, cores)
                    window, held = [], 0
                window.append(part)
                held += part.nbytes
        if window:
            yield from self._run(job.spec, window, cores)

    def _run(
        self, spec: WorkerSpec, window: list[pa.RecordBatch], cores: int
    ) -> Iterator[tuple[pa.RecordBatch, MaskedBatch]]:
        rows = [(i, _ipc(b)) for i, b in enumerate(window)]
        df = self._spark.createDataFrame(rows, "seq long, batch binary")
        df = df.repartition(min(cores, len(rows)))
        got = sorted(df.mapInArrow(_mask_wire(spec), _WIRE).collect(), key=lambda r: r[0])
        if len(got) != len(window):
            raise BiomaskError(f"Spark returned {len(got)} of {len(window)} batches")
        for row in got:  # the first batch, in input order, that a worker refused
            if row["error"] is not None:
                _raise_error_row(row["error"])
        for row in got:
            q = row["quarantine"]
            res = MaskedBatch(
                _unipc(row["output"]),
                _unipc(q) if q is not None else None,
                json.loads(row["stats"]),
            )
            yield window[row["seq"]], res

    def close(self) -> None:
        if self._spark is not None and self._started:
            self._spark.stop()
        self._spark = None


# -- DataFrames -----------------------------------------------------------------------------


def mask_dataframe(
    df: Any, policy: PolicyLike, keyring: Keyring | str | os.PathLike[str],
    *, table: str | None = None, keystore: str | None = None,
    lexicon_from: str | Mapping[str, str] | None = None,
) -> Any:  # fmt: skip
    """Mask a Spark ``DataFrame`` of one policy table with ``mapInArrow``.

    The DataFrame's session must come from :func:`local_session` in this process (or
    carry ``spark.executorEnv.BIOMASK_WORKER_TOKEN`` otherwise set from
    :meth:`~biomask.keys.Keyring.worker_handle`): the keyring is sealed under its token
    here, in the driver, and never pickled.

    Parameters
    ----------
    lexicon_from:
        The input URI (or ``{table: URI}``) the ``text`` operator's known values are read
        from, here in the driver, as :func:`biomask.integrations.ray.mask_dataset` does.
        Without it names in notes are found by NER and patterns only.

    Returns
    -------
    pyspark.sql.DataFrame
        The policy's output columns and ``_biomask_reason`` (null when masked completely;
        a quarantined row is masked wherever possible and never passes through in clear).
        Lazy, as Spark DataFrames are.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    from biomask.keys import Keyring
    from biomask.masking import Masker
    from biomask.masking.api import resolve_policy
    from biomask.pipeline import WorkerSpec, table_services

    pol = resolve_policy(policy)
    ring = keyring if isinstance(keyring, Keyring) else Keyring.open(keyring)
    token = session_token(df.sparkSession.sparkContext.getConf())
    if not token:
        raise BiomaskError(
            f"this Spark session's workers have no {WORKER_TOKEN_ENV}: build it with "
            "biomask.integrations.spark.local_session(token)"
        )
    sealed, _ = ring.worker_handle(token=token)
    name = table or next(iter(pol.table_specs()))
    path = str(ring.path) if ring.path is not None else None
    services = table_services(pol, ring, name, lexicon_from=lexicon_from, keystore=keystore)
    spec = WorkerSpec(pol, sealed, name, path, services)
    in_schema = pa.schema([pa.field(f.name, _arrow_type(f.dataType)) for f in df.schema])
    out_schema = Masker(pol, ring, table=name).output_schema(in_schema)
    out_schema = out_schema.append(pa.field(REASON_COLUMN, pa.string()))

    def run(parts: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        m = _masker(spec)
        for part in parts:
            if not part.num_rows:
                continue
            res = m.mask_batch(part)
            out = res.output.append_column(
                REASON_COLUMN, pa.nulls(res.output.num_rows, pa.string())
            )
            yield out.cast(out_schema)
            if res.quarantine is not None and res.quarantine.num_rows:
                yield res.quarantine.cast(out_schema)

    return df.mapInArrow(run, from_arrow_schema(out_schema))


def _arrow_type(spark_type: Any) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    t: pa.DataType = to_arrow_type(spark_type)
    return t
