"""examples/first_hour.sh: the first hour a new user follows, run end to end.

demo -> policy suggest -> the one review edit -> mask -> audit verify -> train, with
``biomask`` and ``python`` on PATH meaning this checkout and this interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch", reason="the last step trains with PyTorch: pip install torch")

ROOT = Path(__file__).resolve().parents[1]


def test_first_hour_script_runs_end_to_end(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "biomask"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m biomask.cli "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    env.update(
        PATH=str(bin_dir) + os.pathsep + env.get("PATH", ""),
        PYTHON=sys.executable,
        BIOMASK_PASSPHRASE="first hour passphrase",
        BIOMASK_NO_PROGRESS="1",
        ROWS="200",
    )
    res = subprocess.run(
        ["bash", str(ROOT / "examples" / "first_hour.sh"), "work"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for step in range(1, 8):
        assert f"== {step}. " in out
    assert "address_city" in out  # the REVIEW line the user is shown
    # step 6 (audit verify) exited 0, or the script (set -e) would have stopped before 7
    assert "epoch 1: loss" in out
    work = tmp_path / "work"
    policy = (work / "policy.yaml").read_text()
    assert "address_city:    {op: keep, quasi_identifier: true}" in policy  # the one edit
    # the draft kept the join: every capture's subject is a masked subject
    subjects = set(pq.read_table(work / "masked" / "subjects.parquet")["subject_id"].to_pylist())
    captures = pq.read_table(work / "masked" / "captures.parquet")["subject_id"].to_pylist()
    assert captures and all(s in subjects for s in captures)
    raw = set(pq.read_table(work / "demo" / "input" / "subjects.parquet")["subject_id"].to_pylist())
    assert not raw & subjects
    # a second run refuses to overwrite the first
    again = subprocess.run(
        ["bash", str(ROOT / "examples" / "first_hour.sh"), "work"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1 and "work exists" in again.stderr
