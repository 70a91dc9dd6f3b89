"""Mask on Ray: the same policy and keyring, distributed, with identical output.

Tokens need no shared state (they are keyed functions of value and domain), so each Ray
worker opens the keyring itself (path + ``BIOMASK_PASSPHRASE`` passed through the runtime
environment; a :class:`~biomask.keys.Keyring` refuses to be pickled) and builds its own
Masker once. The driver streams the results into biomask's atomic sinks and writes the
lineage for the whole distributed run as one run.

Quarantined rows travel with the results in the ``_biomask_reason`` column (null for a
masked row), so rows in = rows out + rows quarantined holds for the distributed run too.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from biomask.errors import BiomaskError, MissingDependencyError
from biomask.masking.masker import REASON_COLUMN

__all__ = ["mask_dataset", "run_mask_ray"]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "the Ray engine needs Ray: pip install 'biomask[ray]'"
        ) from None
    return ray


class _MaskBatches:
    """Runs in a Ray worker: opens the keyring there and masks whole Arrow batches."""

    def __init__(self, policy_text: str, policy_source: str, keyring_path: str, table: str | None):
        from biomask.keys import Keyring
        from biomask.masking import Masker
        from biomask.policies import parse_policy

        policy = parse_policy(policy_text, source=policy_source)
        self.masker = Masker(policy, Keyring.open(keyring_path), table=table)

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts: list[pa.Table] = []
        for rb in batch.to_batches() or [batch.schema.empty_table().to_batches()]:
            if isinstance(rb, list):
                continue
            res = self.masker.mask_batch(rb)
            out = pa.Table.from_batches([res.output])
            out = out.append_column(REASON_COLUMN, pa.nulls(out.num_rows, pa.string()))
            parts.append(out)
            if res.quarantine is not None:
                parts.append(pa.Table.from_batches([res.quarantine]))
        if not parts:
            schema = self.masker.output_schema(batch.schema)
            return schema.append(pa.field(REASON_COLUMN, pa.string())).empty_table()
        return pa.concat_tables(parts)


def mask_dataset(
    ds: Any,
    policy_path: str | os.PathLike[str],
    keyring_path: str | os.PathLike[str],
    *,
    table: str | None = None,
    concurrency: int | None = None,
) -> Any:
    """Mask a ``ray.data.Dataset``; returns a dataset with a ``_biomask_reason`` column.

    Rows whose reason is null were masked completely; the others were quarantined (masked
    where possible). The passphrase comes from ``BIOMASK_PASSPHRASE`` in the driver's
    environment and is handed to the workers through Ray's runtime environment.
    """
    policy_file = Path(policy_path)
    text = policy_file.read_text(encoding="utf-8")
    ray = _ray()
    workers = concurrency or max(1, (os.cpu_count() or 2))
    return ds.map_batches(
        _MaskBatches,
        fn_constructor_args=(text, str(policy_file), str(keyring_path), table),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0.5,  # leave headroom: a pool that takes every CPU can starve the reader
        zero_copy_batch=True,
    )


def run_mask_ray(
    policy_path: str | os.PathLike[str],
    keyring_path: str | os.PathLike[str],
    input_uri: str,
    output_uri: str,
    *,
    lineage_dir: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 65_536,
    concurrency: int | None = None,
) -> Any:
    """``biomask mask --engine ray``: Parquet in, masked on Ray, written by the driver.

    Connects to ``RAY_ADDRESS`` when set, else starts a local Ray. Output and quarantine
    are committed atomically by biomask's sinks; lineage is one run written by the driver.
    """
    ray = _ray()
    from biomask.connectors import display_uri, open_sink, open_source, quarantine_uri
    from biomask.keys import Keyring
    from biomask.lineage import LineageRecorder
    from biomask.lineage.record import ColumnRecord, RunRecord
    from biomask.masking import Masker
    from biomask.pipeline import RunSummary, default_lineage_dir
    from biomask.policies import load_policy

    started = time.perf_counter()
    policy = load_policy(policy_path)
    if policy.is_multi_table:
        raise BiomaskError("--engine ray masks one table per run; run it once per table")
    ring = Keyring.open(keyring_path)
    source = open_source(input_uri, batch_size=batch_size)
    masker = Masker(policy, ring)
    out_schema = masker.output_schema(source.schema)  # policy problems stop us here
    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        env = {"BIOMASK_PASSPHRASE": os.environ.get("BIOMASK_PASSPHRASE", "")}
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            runtime_env={"env_vars": env},
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    # keep the input's row order, so the output file is the same as the local engine's
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    files = [str(f) for f in source.ref().files] or [input_uri]
    import pyarrow.fs

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    blocks = max(len(files), 4 * (concurrency or os.cpu_count() or 2))
    ds = ray.data.read_parquet(
        files,
        filesystem=pyarrow.fs.LocalFileSystem(),  # local paths: no fsspec/HTTP probing
        override_num_blocks=blocks,
    ).repartition(blocks)  # small inputs arrive as one block: split it so every worker works
    masked = mask_dataset(ds, policy_path, keyring_path, concurrency=concurrency)
    lineage = Path(lineage_dir) if lineage_dir else default_lineage_dir(output_uri, policy.dataset)
    record = RunRecord(
        run_id=str(uuid.uuid4()), command="mask", job=policy.dataset,
        policy_path=policy.source, policy_sha256=policy.sha256, keyring_id=ring.keyring_id,
        key_ids=masker.key_ids, signing_key_id=ring.signing_key_id, inputs=[source.ref()],
    )  # fmt: skip
    for name, op in masker.operators.items():
        record.columns.append(
            ColumnRecord(table=masker.table, column=name, op=op.name, masks=op.name != "keep",
                         key_id=op.key_id, dropped=not op.keeps_column)
        )  # fmt: skip
        record.operator_counts[op.name] = record.operator_counts.get(op.name, 0) + 1
    recorder = LineageRecorder(lineage, ring, record, policy=policy)
    recorder.start()
    meta = {k.decode(): v.decode() for k, v in (out_schema.metadata or {}).items()}
    sink = open_sink(output_uri, out_schema, overwrite=overwrite, metadata=meta)
    q_sink = None
    try:
        for tbl in masked.iter_batches(batch_format="pyarrow", batch_size=batch_size):
            tbl = tbl if isinstance(tbl, pa.Table) else pa.Table.from_batches([tbl])
            reason = tbl.column(REASON_COLUMN)
            good = tbl.filter(pc.is_null(reason)).drop_columns([REASON_COLUMN])
            bad = tbl.filter(pc.is_valid(reason))
            for rb in good.cast(out_schema).to_batches():
                sink.write(rb)
                recorder.observe_output(masker.table, rb)
            record.rows_out += good.num_rows
            record.rows_in += tbl.num_rows
            if bad.num_rows:
                if q_sink is None:
                    q_sink = open_sink(quarantine_uri(output_uri), bad.schema, overwrite=overwrite)
                for rb in bad.to_batches():
                    q_sink.write(rb)
                record.rows_quarantined += bad.num_rows
        sink.commit()
        if q_sink is not None:
            q_sink.commit()
    except BaseException as exc:
        sink.abort()
        if q_sink is not None:
            q_sink.abort()
        record.error = str(exc) if isinstance(exc, BiomaskError) else type(exc).__name__
        recorder.fail(exc)
        raise
    record.outputs = [sink.ref()]
    record.quarantine = [q_sink.ref()] if q_sink is not None else []
    record.extra["engine"] = "ray"
    import datetime as _dt

    record.ended_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
    recorder.complete()
    return RunSummary(
        run_id=record.run_id, rows_in=record.rows_in, rows_out=record.rows_out,
        rows_quarantined=record.rows_quarantined, seconds=time.perf_counter() - started,
        lineage_dir=lineage, outputs=[display_uri(output_uri)],
        quarantine=[display_uri(quarantine_uri(output_uri))] if q_sink is not None else [],
        operator_counts=dict(record.operator_counts), key_ids=masker.key_ids,
    )  # fmt: skip
