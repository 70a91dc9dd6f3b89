"""biomask connectors: PostgreSQL read vs psycopg, and bounded memory Parquet -> Parquet.

Run:  python bench/connectors.py [--pg-rows 1000000] [--sizes 1000000,5000000]
                                 [--pg-uri postgresql://postgres@127.0.0.1:5432/test]

Part 1 creates a table of ``--pg-rows`` rows with eight typical enrolment columns
(generate_series in SQL) and reads it twice into a ``pyarrow.Table``: through biomask's
ADBC source (binary COPY straight into Arrow) and through psycopg ``cursor.fetchall()``
converted column by column with ``pa.array``. Each is timed best of two; it prints rows/s
of each and the ratio. The table is dropped afterwards.

Part 2 generates a hive-less Parquet directory of each size with numpy (250k-row files,
64k-row row groups) in a temporary directory, then streams it ``open_source ->
open_sink`` (Parquet directory) in a fresh subprocess per size and prints rows/s and the
peak RSS (VmHWM) of each, and their ratio: memory must be bounded by the batch size, not
by the input size (goal: within 10%). The Masker is NOT in this loop; the pipeline bench
(``bench/structured.py``) measures masking.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"

CREATE = """
CREATE TABLE {t} AS
SELECT i::int8                                             AS id,
       'SUBJ-' || lpad(i::text, 8, '0')                    AS subject_id,
       'Name ' || (i % 100003)::text || ' Surname'         AS full_name,
       'user' || i::text || '@example.org'                 AS email,
       DATE '1950-01-01' + (i % 20000)                     AS date_of_birth,
       TIMESTAMPTZ '2024-01-01 00:00+00' + i * INTERVAL '1 second' AS capture_ts,
       (i % 1000) / 7.0::float8                            AS score,
       decode(md5(i::text), 'hex')                         AS template
FROM generate_series(1, {n}) AS i
"""


def _best_of(n: int, fn: object) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(n):
        t0 = time.perf_counter()
        rows = fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best, rows


def bench_postgres(uri: str, rows: int) -> None:
    """biomask ADBC source vs psycopg fetchall -> pyarrow.Table, same table, same run."""
    import psycopg

    from biomask.connectors import open_source
    from biomask.connectors.postgres import PgTarget

    target = PgTarget(uri)
    table = f"bench_connectors_{secrets.token_hex(4)}"
    dsn = f"host={target.host} port={target.port} dbname={target.db}"
    if target.user:
        dsn += f" user={target.user}"
    if target.password:
        dsn += f" password={target.password}"
    print(f"== PostgreSQL read, {rows:,} rows x 8 columns ({target.display}) ==")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except Exception as exc:
        print(f"   skipped: cannot connect ({type(exc).__name__})")
        return
    try:
        t0 = time.perf_counter()
        conn.execute(CREATE.format(t=table, n=rows))
        conn.execute(f"ANALYZE {table}")
        print(f"   table created in {time.perf_counter() - t0:.1f}s")

        src_uri = f"{uri}{'&' if '?' in uri else '?'}table={table}"
        source = open_source(src_uri)
        schema = source.schema

        def via_biomask() -> int:
            t = pa.Table.from_batches(list(open_source(src_uri).batches()), schema)
            return int(t.num_rows)

        def via_psycopg() -> int:
            with psycopg.connect(dsn) as c, c.cursor() as cur:
                cur.execute(f"SELECT * FROM {table}")
                records = cur.fetchall()
                cols = list(zip(*records, strict=True)) if records else [()] * len(schema)
                t = pa.table(
                    {f.name: pa.array(col, f.type) for f, col in zip(schema, cols, strict=True)}
                )
                return int(t.num_rows)

        b_s, b_rows = _best_of(2, via_biomask)
        p_s, p_rows = _best_of(2, via_psycopg)
        assert b_rows == p_rows == rows, (b_rows, p_rows)
        print(f"   biomask ADBC source          : {b_s:6.2f}s  {rows / b_s:12,.0f} rows/s")
        print(f"   psycopg fetchall -> pa.Table : {p_s:6.2f}s  {rows / p_s:12,.0f} rows/s")
        print(f"   ratio (biomask / psycopg)    : {p_s / b_s:.1f}x faster")
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()


def _strings(prefix: str, ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")


def generate_parquet_dir(root: Path, rows: int, *, per_file: int = 250_000) -> None:
    """Eight enrolment-like columns, written file by file so generation memory is bounded."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    done, k = 0, 0
    while done < rows:
        n = min(per_file, rows - done)
        ids = np.arange(done, done + n, dtype=np.int64)
        tpl = rng.integers(0, 256, size=n * 32, dtype=np.uint8).tobytes()
        offsets = pa.py_buffer(np.arange(0, (n + 1) * 32, 32, dtype=np.int32).tobytes())
        table = pa.table(
            {
                "id": pa.array(ids),
                "subject_id": _strings("SUBJ-", ids),
                "full_name": _strings("Name ", ids % 100_003),
                "email": pc.binary_join_element_wise(
                    _strings("user", ids), pa.scalar("@example.org"), ""
                ),
                "date_of_birth": pa.array((ids % 20_000).astype("int32")).cast(pa.date32()),
                "capture_ts": pa.array(
                    (1_704_067_200_000_000 + ids * 1_000_000).astype("int64"),
                    pa.timestamp("us", tz="UTC"),
                ),
                "score": pa.array(rng.random(n)),
                "template": pa.Array.from_buffers(
                    pa.binary(), n, [None, offsets, pa.py_buffer(tpl)]
                ),
            }
        )
        pq.write_table(
            table, root / f"part-{k:04d}.parquet", row_group_size=65_536, compression="zstd"
        )
        done += n
        k += 1


def child_stream(src: str, dst: str, batch_size: int) -> None:
    """Runs in a fresh process: stream src -> dst, print rows, seconds, peak RSS (JSON)."""
    from biomask.connectors import open_sink, open_source

    t0 = time.perf_counter()
    source = open_source(src, batch_size=batch_size)
    sink = open_sink(dst, source.schema)
    rows = 0
    for batch in source.batches():
        sink.write(batch)
        rows += batch.num_rows
    sink.commit()
    seconds = time.perf_counter() - t0
    hwm_kib = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm_kib = int(line.split()[1])
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": hwm_kib / 1024}))


def bench_streaming(sizes: list[int], batch_size: int) -> None:
    print(f"== Parquet dir -> open_source -> open_sink (Parquet dir), batch {batch_size:,} ==")
    print("   (source -> sink only: the Masker is not in this loop)")
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="biomask-bench-") as tmp:
        for n in sizes:
            src = Path(tmp) / f"in-{n}"
            t0 = time.perf_counter()
            generate_parquet_dir(src, n)
            size_mib = sum(f.stat().st_size for f in src.iterdir()) / 2**20
            gen_s = time.perf_counter() - t0
            out = Path(tmp) / f"out-{n}"
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(src),
                    str(out) + "/",
                    "--batch-size",
                    str(batch_size),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(f"   {n:>10,} rows: FAILED\n{proc.stderr}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            assert r["rows"] == n
            results[n] = r
            print(
                f"   {n:>10,} rows ({size_mib:6.0f} MiB parquet, generated in {gen_s:4.1f}s): "
                f"{r['seconds']:6.2f}s  {n / r['seconds']:12,.0f} rows/s  "
                f"peak RSS {r['peak_rss_mib']:7.1f} MiB"
            )
            for d in (src, out):
                for f in sorted(d.rglob("*"), reverse=True):
                    f.unlink() if f.is_file() else f.rmdir()
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        ratio = results[hi]["peak_rss_mib"] / results[lo]["peak_rss_mib"]
        verdict = "OK" if ratio <= 1.10 else "ABOVE GOAL"
        print(
            f"   peak RSS {hi:,} / {lo:,} rows: {ratio:.3f} "
            f"(goal <= 1.10: {verdict}; input is {hi / lo:.0f}x larger)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-uri", default=os.environ.get("BIOMASK_BENCH_PG", DEFAULT_PG))
    ap.add_argument("--pg-rows", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_stream(args.child[0], args.child[1], args.batch_size)
        return
    print(f"pyarrow {pa.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if not args.skip_pg:
        bench_postgres(args.pg_uri, args.pg_rows)
    bench_streaming([int(s) for s in args.sizes.split(",")], args.batch_size)


if __name__ == "__main__":
    main()
