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
* :class:`RayExecutor` is ``biomask mask --engine ray``: an
  :class:`~biomask.pipeline.Executor` that only moves batches. The pipeline reads, writes,
  checks the quarantine limit, records lineage and commits, exactly as for the local
  engine; the executor sends each batch to one of a pool of Ray actors (round robin, a
  bounded number in flight, so memory stays bounded by the batch size) and hands the
  masked batches back in input order.

The output equals the local engine's byte for byte (same order, values, schema metadata,
files), except template ciphertexts: their nonces are random by design, and each worker
uses its own run data key. A CI test compares the engines.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from biomask.errors import BiomaskError, MissingDependencyError, QuarantineLimitError
from biomask.keys.keyring import PASSPHRASE_ENV
from biomask.masking.masker import REASON_COLUMN, MaskedBatch

if TYPE_CHECKING:
    from biomask.masking.api import PolicyLike
    from biomask.pipeline import TableJob, WorkerSpec

__all__ = ["RayExecutor", "mask_dataset"]

log = logging.getLogger(__name__)

#: CPU shares Ray reserves per actor: a pool that reserved every CPU would starve Ray's
#: own tasks; the actors still use a whole core each
_ACTOR_CPUS = 0.5


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


def worker_masker(spec: WorkerSpec) -> Any:
    """The Masker of ``spec`` in this worker process, opened with the environment's token."""
    token = os.environ.get(WORKER_TOKEN_ENV)
    if not token:
        raise BiomaskError(f"this worker has no {WORKER_TOKEN_ENV}: it cannot open its key handle")
    return spec.masker(token)


class _MaskBatches:
    """Runs in a Ray actor: builds the Masker once from its spec, masks batches."""

    def __init__(self, spec: WorkerSpec, on_quarantine: str) -> None:
        # one actor per core: column threads inside it would only fight its neighbours
        self.masker = worker_masker(spec)
        self.on_quarantine = on_quarantine

    def mask(self, batch: pa.RecordBatch) -> MaskedBatch:
        """One batch as the pipeline's executor asks for it."""
        res: MaskedBatch = self.masker.mask_batch(batch)
        return res

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
    from biomask.pipeline import WorkerSpec, table_services

    if on_quarantine not in ("mark", "fail"):
        raise BiomaskError(f"on_quarantine must be 'mark' or 'fail', not {on_quarantine!r}")
    pol = resolve_policy(policy)
    ring = Keyring.open(keyring_path)  # fails fast: passphrase
    sealed, token = ring.worker_handle()
    name = table or next(iter(pol.table_specs()))
    # what the Masker declares is read here, once, and travels with the spec
    services = table_services(pol, ring, name, lexicon_from=lexicon_from, keystore=keystore)
    spec = WorkerSpec(pol, sealed, name, str(Path(keyring_path).resolve()), services)
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


# -- the engine ----------------------------------------------------------------------------


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


class RayExecutor:
    """``--engine ray``: the pipeline's batches masked on a pool of Ray actors, in order.

    Connects to ``RAY_ADDRESS`` when set, else uses the Ray this process already started,
    else starts a quiet local Ray on every core (shut down again by :meth:`close`). Each
    batch goes to the next actor round robin; at most two per actor are in flight, and
    results come back in input order, so the pipeline writes exactly what the local engine
    writes.

    Parameters
    ----------
    concurrency:
        Masking actors (default: the cluster's CPUs).
    """

    name = "ray"
    remote = True
    worker_token: str | None = None

    def __init__(self, concurrency: int | None = None) -> None:
        self.concurrency = concurrency
        self._ctx: _RayContext | None = None
        self._token: str | None = None
        self._actors: dict[str, list[Any]] = {}

    def open(self, token: str | None) -> None:
        ray = _ray()
        self._token = token
        self._ctx = _RayContext(ray, token).__enter__()

    def _pool(self, job: TableJob) -> list[Any]:
        if job.table not in self._actors:
            ray = _ray()
            assert job.spec is not None and self._ctx is not None
            options: dict[str, Any] = {"num_cpus": _ACTOR_CPUS, "max_restarts": 0}
            if not self._ctx.local and self._token is not None:
                options["runtime_env"] = {"env_vars": _worker_env(self._token)}
            actor = ray.remote(**options)(_MaskBatches)
            n = self.concurrency or _default_workers(ray)
            self._actors[job.table] = [actor.remote(job.spec, "mark") for _ in range(n)]
        return self._actors[job.table]

    def map(
        self, job: TableJob, batches: Iterator[pa.RecordBatch]
    ) -> Iterator[tuple[pa.RecordBatch, MaskedBatch]]:
        ray = _ray()
        actors = self._pool(job)
        pending: deque[tuple[pa.RecordBatch, Any]] = deque()
        for i, batch in enumerate(batches):
            if len(pending) >= 2 * len(actors):
                done, ref = pending.popleft()
                yield done, ray.get(ref)
            pending.append((batch, actors[i % len(actors)].mask.remote(batch)))
        while pending:
            done, ref = pending.popleft()
            yield done, ray.get(ref)

    def close(self) -> None:
        if self._ctx is None:
            return
        ray = _ray()
        for pool in self._actors.values():
            for a in pool:
                ray.kill(a)
        self._actors.clear()
        self._ctx.__exit__(None, None, None)
        self._ctx = None
