"""Whole-process behaviour: SIGKILL mid-write leaves nothing; stdin/stdout JSON Lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import pyarrow as pa
    from biomask.connectors import open_sink

    out, batches = sys.argv[1], int(sys.argv[2])
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])
    sink = open_sink(out, schema, overwrite="--overwrite" in sys.argv)
    print("opened", flush=True)
    for k in range(batches):
        ids = np.arange(k * 5000, (k + 1) * 5000)
        batch = pa.record_batch(
            [pa.array(ids), pa.array([f"n{i}" for i in ids]), pa.array(ids / 3.0)],
            schema=schema,
        )
        sink.write(batch)
        print(f"batch {k}", flush=True)
        time.sleep(0.02)
    print("before-commit", flush=True)
    time.sleep(0.3)
    sink.commit()
    print("committed", flush=True)
    """
)

BATCHES = 30


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_and_kill(script: Path, out: str, kill_after: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(script), out, str(BATCHES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        else:
            pytest.fail(f"writer ended before '{kill_after}': {proc.stderr.read()}")  # type: ignore[union-attr]
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _run(script: Path, out: str, *extra: str) -> None:
    res = subprocess.run(
        [sys.executable, str(script), out, str(BATCHES), *extra],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("committed")


@pytest.mark.slow
@pytest.mark.parametrize("out", ["out.parquet", "out.csv", "out.jsonl", "out.arrow", "outdir/"])
def test_sigkill_leaves_nothing_and_rerun_is_byte_identical(tmp_path: Path, out: str) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    work = tmp_path / "work"
    work.mkdir()
    final = work / out.rstrip("/")
    uri = str(work / out)
    for point in ("opened", "batch 0", "batch 7", f"batch {BATCHES - 1}", "before-commit"):
        _run_and_kill(script, uri, point)
        assert not final.exists(), f"partial output under the final name after kill at {point}"
    # The killed writers' temporaries are swept by the next writer of the same output.
    _run(script, uri)
    assert sorted(p.name for p in work.iterdir()) == [final.name]
    reference = tmp_path / "ref"
    reference.mkdir()
    _run(script, str(reference / out))

    def content(p: Path) -> dict[str, bytes]:
        if p.is_dir():
            return {f.relative_to(p).as_posix(): f.read_bytes() for f in sorted(p.rglob("*"))}
        return {"": p.read_bytes()}

    assert content(final) == content(reference / out.rstrip("/"))
    # and a rerun with --overwrite replaces it with the same bytes
    _run(script, uri, "--overwrite")
    assert content(final) == content(reference / out.rstrip("/"))


STDIO = textwrap.dedent(
    """
    import sys
    from biomask.connectors import open_sink, open_source
    src = open_source("-", batch_size=int(sys.argv[2]))
    sink = open_sink(sys.argv[1], src.schema)
    for b in src.batches():
        sink.write(b)
    sink.commit()
    """
)


def test_jsonl_stdin_to_stdout(tmp_path: Path) -> None:
    script = tmp_path / "stdio.py"
    script.write_text(STDIO)
    records = [
        {"id": i, "name": f"Ünï {i}", "score": i / 4, "tags": ["a", "b"][: i % 3]}
        for i in range(2500)
    ]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    data = data.replace("\n", "\n\n", 3)  # blank lines are skipped
    res = subprocess.run(
        [sys.executable, str(script), "-", "100"],
        input=data.encode(),
        capture_output=True,
        env=_env(),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    out = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert out == records


def test_jsonl_stdin_to_parquet_with_broken_line(tmp_path: Path) -> None:
    script = tmp_path / "stdio.py"
    script.write_text(STDIO)
    data = b'{"id": 1}\n{"id": \n{"id": 3}\n'
    out = tmp_path / "o.parquet"
    res = subprocess.run(
        [sys.executable, str(script), str(out), "2"],
        input=data,
        capture_output=True,
        env=_env(),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    # the reject column is not written by sinks; the broken line is a row of nulls
    assert pq.read_table(out).to_pylist() == [{"id": 1}, {"id": None}, {"id": 3}]


def test_stdin_source_reports_reject(tmp_path: Path) -> None:
    import io

    from biomask.connectors import REJECT_COLUMN
    from biomask.connectors.files import StdinJsonlSource

    src = StdinJsonlSource(batch_size=10, stream=io.BytesIO(b'{"a": 1}\nnope\n'))
    rows = [r for b in src.batches() for r in b.to_pylist()]
    assert rows == [
        {"a": 1, REJECT_COLUMN: None},
        {"a": None, REJECT_COLUMN: "line 2: invalid JSON"},
    ]
    assert src.ref().name == "-"
