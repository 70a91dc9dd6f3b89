"""The documentation runs: every shell and Python block of README.md and docs/.

A snippet that stops working fails here, not in a new user's terminal. Each document gets
a fresh copy of ``biomask demo --out biomask-demo`` (run once) as its working directory,
and its blocks run in order there, as a reader would paste them: ``bash``/``sh`` blocks
with ``bash -e``, ``console`` blocks' ``$`` lines likewise, ``python`` blocks each in a new
interpreter (so each must stand alone). A ``yaml`` block whose fence names a file
(```` ```yaml subjects-policy.yaml ````) is written there first, as the text asks the
reader to. Blocks that are not runnable by nature carry a language that says so
(``yaml``, ``json``, ``text``); a block with no language fails the test. A runnable
block that must not run here (the install that this test runs inside) is preceded by
``<!-- docs-test: skip: REASON -->``. Blocks that name a ``postgresql://`` URI use the
real server on 127.0.0.1:5432 and skip, saying why, when none is running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = frozenset({"bash", "sh", "shell", "console", "python"})
INERT = frozenset({"yaml", "json", "text", "toml", "html"})
PASSPHRASE = "a long passphrase"  # what the README exports
_FENCE = re.compile(r"^```(\S*)\s*(\S*)\s*$")
_SKIP = re.compile(r"^<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->$")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    arg: str  # a file name for yaml blocks
    body: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the skip marker just above each."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = _SKIP.match(prev)
        out.append(
            Block(doc, i + 1, m.group(1), m.group(2), "\n".join(lines[i + 1 : j]) + "\n",
                  skip.group(1) if skip else None)
        )  # fmt: skip
        i = j + 1
    return out


ALL = [b for d in DOCS for b in blocks(d)]


def test_every_block_says_whether_it_runs() -> None:
    unlabeled = [b.where for b in ALL if b.lang not in RUNNABLE | INERT]
    assert not unlabeled, (
        f"give these blocks a language ({', '.join(sorted(RUNNABLE))} run; "
        f"{', '.join(sorted(INERT))} do not): {unlabeled}"
    )
    skipped = [b for b in ALL if b.skip]
    assert all(b.lang in RUNNABLE for b in skipped), "skip markers only go on runnable blocks"
    # the exemptions are few and named: the installs this test runs inside
    assert len(skipped) <= 3, [b.where for b in skipped]


def _env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    env["BIOMASK_PASSPHRASE"] = PASSPHRASE
    env["BIOMASK_NO_PROGRESS"] = "1"
    env.pop("BIOMASK_DEBUG", None)
    return env


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``biomask demo --out biomask-demo`` run once, with ``biomask`` and ``python`` on
    PATH meaning this checkout and this interpreter; returns (site, bin dir, stdout)."""
    base = tmp_path_factory.mktemp("docs")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, line in (
        ("biomask", f'exec "{sys.executable}" -m biomask.cli "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
        ("python3", f'exec "{sys.executable}" "$@"'),
    ):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{line}\n")
        shim.chmod(0o755)
    site = base / "site"
    site.mkdir()
    res = subprocess.run(
        ["biomask", "demo", "--out", "biomask-demo"], cwd=site, env=_env(bin_dir),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return site, bin_dir, res.stdout


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
        ) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"PostgreSQL at 127.0.0.1:5432/test not reachable: {type(exc).__name__}"
    return None


def _script(block: Block) -> str:
    if block.lang == "console":
        cmds = [ln[2:] for ln in block.body.splitlines() if ln.startswith("$ ")]
        return "\n".join(cmds) + "\n"
    return block.body


def _run(block: Block, cwd: Path, env: dict[str, str]) -> str | None:
    """Run one block; None when it worked, else what went wrong (for the failure list)."""
    if block.lang == "python":
        script = cwd / f"_block_{block.doc.stem}_{block.line}.py"
        script.write_text(block.body, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", _script(block)]
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return f"{block.where}: still running after 240 s"
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-8:]
        return f"{block.where} ({block.lang}) exited {res.returncode}:\n    " + "\n    ".join(tail)
    return None


RUN_DOCS = [d for d in DOCS if any(b.lang in RUNNABLE and not b.skip for b in blocks(d))]


@pytest.mark.parametrize("doc", RUN_DOCS, ids=[d.name for d in RUN_DOCS])
def test_doc_blocks_run(doc: Path, demo_site: tuple[Path, Path, str], tmp_path: Path) -> None:
    site, bin_dir, _ = demo_site
    mine = blocks(doc)
    if any("postgresql://" in b.body for b in mine if b.lang in RUNNABLE and not b.skip):
        reason = _pg_reachable()
        if reason:
            pytest.skip(reason)
    cwd = tmp_path / "site"
    shutil.copytree(site, cwd, symlinks=True)
    env = _env(bin_dir)
    failures: list[str] = []
    ran = 0
    for b in mine:
        if b.lang == "yaml" and b.arg:
            (cwd / b.arg).write_text(b.body, encoding="utf-8")
        if b.lang not in RUNNABLE or b.skip:
            continue
        ran += 1
        err = _run(b, cwd, env)
        if err:
            failures.append(err)
    assert ran > 0
    assert not failures, f"{len(failures)} of {ran} blocks failed:\n" + "\n".join(failures)


def test_yaml_policies_in_the_docs_validate() -> None:
    """A complete policy shown in the docs (``version: 1``) loads, so it can be copied."""
    from biomask.policies import parse_policy

    policies = [b for b in ALL if b.lang == "yaml" and "\nversion: 1" in "\n" + b.body]
    assert len(policies) >= 3
    for b in policies:
        parse_policy(b.body, source=b.where)


def test_cli_sample_output_is_what_the_demo_prints(demo_site: tuple[Path, Path, str]) -> None:
    """docs/cli.md's sample is the demo's summary, line for line (times and rates vary)."""
    _, _, out = demo_site
    (sample,) = [b for b in blocks(ROOT / "docs" / "cli.md") if b.arg == "demo-output"]

    def norm(text: str) -> list[str]:
        text = re.sub(r"in [\d.]+ s \([\d,]+ rows/s\)", "in T s (R rows/s)", text)
        text = re.sub(r"biomask-receipt:v1:(\d+):\S+", r"biomask-receipt:v1:\1:H", text)
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()]

    got = norm(out)
    for line in norm(sample.body):
        assert line in got, f"docs/cli.md shows {line!r}; the demo printed:\n" + "\n".join(got)
    # the demo names its steps before each starts (it is silent for a while otherwise)
    steps = [ln for ln in got if ln.startswith("biomask demo: ")]
    assert [s.split(" ", 3)[2] for s in steps] == ["1/3", "2/3", "3/3"]
