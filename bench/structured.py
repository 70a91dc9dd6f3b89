"""biomask vs presidio-structured on the same 10 structured columns, Parquet to Parquet.

Run:  python bench/structured.py [--rows 100000] [--repeat 3] [--rss 1000000,5000000]
      [--evidence RUNS]

Both tools read the same generated Parquet file, mask the same ten columns and write
Parquet. biomask runs its whole pipeline (policy, keyring, lineage included); presidio-
structured runs its PandasDataProcessor with one built-in operator per column. Each tool
first runs once untimed on the same input (imports and one-off loading: pandas, the name
lists, the lineage page templates, presidio's engines, and the allocators growing to the
run's size, whose page faults cost a first biomask run about 0.2 s on this VM), then runs
``--repeat`` times, the tools taking turns; the best of each is compared, and every run's
time and each tool's median are printed. A third contender in the same turns, "pyarrow
alone", only reads the input and writes it back with biomask's Parquet writer settings,
masking nothing: the floor of any
Parquet-to-Parquet tool built on pyarrow (as biomask is) on this machine, and so the
highest ratio such a tool could print here. The second part masks 1M- and 5M-row inputs with biomask, each in a fresh
subprocess, and prints the peak RSS of each: memory must be bounded by the batch size,
not the input size. ``--evidence RUNS`` also times the lineage evidence (its own thread's
CPU) with lineage's compiled helper and without it, runs taking turns: what the helper
earns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

POLICY = """\
version: 1
dataset: bench-structured
unlisted: keep
entities:
  subject: {column: subject_id}
columns:
  subject_id:      {op: tokenize, domain: subject}
  full_name:       {op: pseudonym, domain: person}
  date_of_birth:   {op: date_shift, entity: subject}
  passport_number: {op: tokenize, domain: passport}
  email:           {op: email, domain: email}
  phone:           {op: phone, domain: phone}
  capture_ts:      {op: date_shift, entity: subject}
  device_serial:   {op: hash, domain: device}
  gps_lat:         {op: generalize, decimals: 1}
  age:             {op: generalize, bucket: 10}
"""
MASKED = [
    "subject_id",
    "full_name",
    "date_of_birth",
    "passport_number",
    "email",
    "phone",
    "capture_ts",
    "device_serial",
    "gps_lat",
    "age",
]


def write_input(path: Path, rows: int) -> None:
    from biomask.demo import iter_structured_batches

    writer = None
    for batch in iter_structured_batches(rows, batch_size=100_000):
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema)
        writer.write_batch(batch)
    assert writer is not None
    writer.close()


def run_biomask(src: Path, dst: Path, policy: Path, batch_size: int = 65_536) -> float:
    import biomask.lineage  # noqa: F401  (import time is not masking time, as for presidio)
    from biomask.keys import Keyring
    from biomask.pipeline import run_mask
    from biomask.policies import load_policy

    ring = Keyring.ephemeral()
    pol = load_policy(policy)
    # each turn is a first run: a fresh lineage directory (an ephemeral keyring may not
    # extend another keyring's signed lineage, and a growing log is not what is measured)
    shutil.rmtree(dst.with_name(dst.name + ".lineage"), ignore_errors=True)
    t = time.perf_counter()
    run_mask(pol, ring, str(src), str(dst), overwrite=True, batch_size=batch_size)
    return time.perf_counter() - t


def run_copy(src: Path, dst: Path) -> float:
    """Read and write back, nothing masked: the Parquet I/O floor on this machine."""
    from biomask.connectors.formats.parquet import parquet_options

    t = time.perf_counter()
    table = pq.read_table(src)
    pq.write_table(table, dst, **parquet_options(table.schema, table.slice(0, 65_536)))
    return time.perf_counter() - t


def evidence_cpu(src: Path, tmp: Path, policy: Path, runs: int) -> dict[bool, list[float]]:
    """CPU seconds (thread time) of the lineage evidence per biomask run, with lineage's
    compiled helper (biomask.lineage._evidence) and without it, runs taking turns.

    The evidence (quasi-identifier counts, residual-PII scan) runs on its own thread; its
    time is summed over the per-batch collection and the end-of-run work. The helper is
    switched off for these calls only, so the masking and the PRF keep theirs.
    """
    import biomask.lineage.evidence as ev
    from biomask.lineage.recorder import LineageRecorder

    spent = [0.0]

    def timed(fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.thread_time() - t

        return wrapper

    saved = {n: getattr(LineageRecorder, n) for n in ("observe_input", "observe_output")}
    saved["conclude_evidence"] = LineageRecorder.conclude_evidence
    native = ev._native
    out: dict[bool, list[float]] = {True: [], False: []}
    try:
        for name, fn in saved.items():
            setattr(LineageRecorder, name, timed(fn))
        for _ in range(runs):
            for on in (True, False):
                ev._native = native if on else (lambda: None)  # type: ignore[assignment]
                spent[0] = 0.0
                run_biomask(src, tmp / "evidence.parquet", policy)
                out[on].append(spent[0])
    finally:
        ev._native = native  # type: ignore[assignment]
        for name, fn in saved.items():
            setattr(LineageRecorder, name, fn)
    return out


def run_presidio(src: Path, dst: Path) -> float:
    import datetime as dt

    import pandas as pd
    from presidio_anonymizer.entities import OperatorConfig
    from presidio_structured import PandasDataProcessor, StructuredAnalysis, StructuredEngine

    shift = dt.timedelta(days=17)
    t = time.perf_counter()
    df = pq.read_table(src).to_pandas()
    df[MASKED] = df[MASKED].astype(object)  # presidio writes strings back cell by cell
    analysis = StructuredAnalysis(entity_mapping={c: c.upper() for c in MASKED})
    ops = {
        "SUBJECT_ID": OperatorConfig("hash", {"hash_type": "sha256"}),
        "FULL_NAME": OperatorConfig("replace", {"new_value": "<PERSON>"}),
        "DATE_OF_BIRTH": OperatorConfig("custom", {"lambda": lambda d: str(d + shift)}),
        "PASSPORT_NUMBER": OperatorConfig("hash", {"hash_type": "sha256"}),
        "EMAIL": OperatorConfig(
            "mask", {"masking_char": "*", "chars_to_mask": 6, "from_end": False}
        ),
        "PHONE": OperatorConfig(
            "mask", {"masking_char": "*", "chars_to_mask": 6, "from_end": True}
        ),
        "CAPTURE_TS": OperatorConfig("custom", {"lambda": lambda d: str(d + shift)}),
        "DEVICE_SERIAL": OperatorConfig("hash", {"hash_type": "sha256"}),
        "GPS_LAT": OperatorConfig("custom", {"lambda": lambda x: str(round(x, 1))}),
        "AGE": OperatorConfig("custom", {"lambda": lambda x: str(x // 10 * 10)}),
    }
    out = StructuredEngine(PandasDataProcessor()).anonymize(df, analysis, ops)
    assert isinstance(out, pd.DataFrame)
    # presidio's operators return strings (custom operators must): store them as such
    out[MASKED] = out[MASKED].astype(str)
    out.to_parquet(dst)
    return time.perf_counter() - t


def rss_child(rows: int, tmp: Path, policy: Path) -> tuple[float, float]:
    """Mask ``rows`` rows in a fresh process; returns (peak RSS MiB, seconds)."""
    src = tmp / f"in-{rows}.parquet"
    if not src.exists():
        write_input(src, rows)
    out_path = tmp / f"out-{rows}.parquet"
    code = (
        "import sys, time;"
        f"sys.path.insert(0, {str(HERE)!r});"
        "from structured import run_biomask;"
        "from pathlib import Path;"
        f"s = run_biomask(Path({str(src)!r}), Path({str(out_path)!r}), Path({str(policy)!r}));"
        # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork and exec into
        # ru_maxrss, so a child started from a large bench process would report the parent's.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
        "print(int(hwm.split()[1]) / 1024, s)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    rss, secs = out.stdout.split()
    return float(rss), float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool (best kept)")
    ap.add_argument(
        "--rss", default="1000000,5000000", help="row counts for the RSS runs ('' to skip)"
    )
    ap.add_argument(
        "--evidence",
        type=int,
        default=0,
        metavar="RUNS",
        help="also time the lineage evidence with and without its compiled helper",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        src = tmp / "in.parquet"
        write_input(src, args.rows)
        run_biomask(src, tmp / "biomask.parquet", policy)  # the untimed warm-up, each tool
        run_presidio(src, tmp / "presidio.parquet")
        run_copy(src, tmp / "copy.parquet")
        bs, ps, cs = [], [], []
        for _ in range(args.repeat):  # taking turns: a slow spell hits both tools
            bs.append(run_biomask(src, tmp / "biomask.parquet", policy))
            ps.append(run_presidio(src, tmp / "presidio.parquet"))
            cs.append(run_copy(src, tmp / "copy.parquet"))
        b, p, c = min(bs), min(ps), min(cs)
        print(f"{args.rows:,} rows, 10 masked columns, Parquet -> Parquet, best of {args.repeat}"
              " after an untimed warm-up (the tools taking turns)")  # fmt: skip
        bm, pm, cm = (statistics.median(x) for x in (bs, ps, cs))
        each = ", ".join(f"{x:.2f}" for x in bs)
        print(f"  biomask             {args.rows / b:>12,.0f} rows/s  ({each} s)")
        each = ", ".join(f"{x:.2f}" for x in ps)
        print(f"  presidio-structured {args.rows / p:>12,.0f} rows/s  ({each} s)")
        print(
            f"  ratio biomask/presidio-structured: {p / b:.1f}x, {pm / bm:.1f}x of the medians  (goals: >= 45x with collision-free tokens; 100x, above the floor here)"
        )
        each = ", ".join(f"{x:.3f}" for x in cs)
        print(f"  reference: pyarrow alone, read + write, nothing masked {args.rows / c:>12,.0f}"
              f" rows/s  ({each} s)")  # fmt: skip
        print(f"    the Parquet I/O floor here: a tool on pyarrow's reader and writer cannot beat"
              f" {p / c:.0f}x presidio-structured; biomask takes {b / c:.1f}x the floor's time,"
              f" {bm / cm:.1f}x of the medians (goal <= 2.3x)")  # fmt: skip
        if args.evidence:
            ev = evidence_cpu(src, tmp, policy, args.evidence)
            on, off = min(ev[True]) * 1000, min(ev[False]) * 1000
            print(f"  lineage evidence CPU per run, best of {args.evidence}: {on:.0f} ms with"
                  f" biomask.lineage._evidence, {off:.0f} ms without ({off - on:.0f} ms saved"
                  f" per {args.rows:,} rows)")  # fmt: skip
        sizes = [int(x) for x in args.rss.split(",") if x]
        if sizes:
            results = {n: rss_child(n, tmp, policy) for n in sizes}
            for n, (rss, secs) in results.items():
                print(f"  biomask {n:>9,} rows: peak RSS {rss:,.0f} MiB, {n / secs:,.0f} rows/s")
            if len(sizes) >= 2:
                lo, hi = results[sizes[0]][0], results[sizes[-1]][0]
                print(
                    f"  peak RSS {sizes[-1]:,} vs {sizes[0]:,} rows: {hi / lo:.3f}x (goal within 10%)"
                )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("BIOMASK_NO_PROGRESS", "1")
    main()
