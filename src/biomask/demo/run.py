"""``biomask demo``: synthetic enrolment export, masked end to end, lineage verified.

Runs on embedded defaults only (files and a throw-away keyring), so a new user sees the
whole product on a fresh machine with no server and no configuration.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console

from biomask.keys import Keyring

__all__ = ["POLICY_RESOURCE", "demo_policy_text", "run_demo"]

POLICY_RESOURCE = "enrolment-policy.yaml"
#: rows per batch in the demo's run: small enough that the captures bar moves (the
#: default 65,536 would mask the demo's few thousand captures in one silent batch)
DEMO_BATCH_ROWS = 1024


def demo_policy_text() -> str:
    """The example policy shipped with biomask (also at examples/enrolment-policy.yaml)."""
    return (resources.files("biomask.demo") / POLICY_RESOURCE).read_text("utf-8")


def run_demo(
    *,
    rows: int,
    out: Path,
    console: Console,
    show: Callable[[Any], None] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Generate, mask and verify; returns the lineage directory.

    Each step is announced before it starts (generating and masking take most of a
    minute at the default size: a silent terminal looks hung); ``progress`` gets the
    masking run's per-table progress (the command line's bars, on a terminal only).
    """
    from biomask.demo import generate
    from biomask.lineage import verify
    from biomask.pipeline import run_mask
    from biomask.policies import parse_policy

    if out.exists():
        marker = out / ".biomask-demo"
        if not marker.exists():
            from biomask.errors import BiomaskError

            raise BiomaskError(
                f"{out} exists and was not made by 'biomask demo'; choose another --out"
            )
        shutil.rmtree(out)
    (out / "input").mkdir(parents=True)
    (out / ".biomask-demo").write_text("made by biomask demo; safe to delete\n")

    console.print(
        f"[bold]biomask demo[/]: 1/3 generating {rows:,} synthetic subjects, their captures "
        "and operator notes"
    )
    data = generate(rows)
    pq.write_table(data.subjects, out / "input" / "subjects.parquet")
    pq.write_table(data.captures, out / "input" / "captures.parquet")
    pq.write_table(data.notes_truth, out / "notes_truth.parquet")
    policy_path = out / "policy.yaml"
    policy_path.write_text(demo_policy_text(), encoding="utf-8")
    policy = parse_policy(policy_path.read_bytes(), source=str(policy_path))

    passphrase = secrets.token_urlsafe(24)
    keyring_path = out / "demo.keyring"
    ring = Keyring.create(keyring_path, passphrase)
    (out / "demo.passphrase").write_text(passphrase + "\n")
    console.print(
        f"  {rows:,} subjects, {data.captures.num_rows:,} captures written to {out / 'input'}"
    )
    console.print(
        f"  using a throw-away demo keyring {keyring_path} (passphrase in "
        f"{out / 'demo.passphrase'}); real runs use 'biomask keys init' and BIOMASK_PASSPHRASE"
    )
    console.print(
        f"[bold]biomask demo[/]: 2/3 masking both tables with {policy_path} (names, e-mails, "
        "phones and passports in the notes are found and replaced)"
    )
    summary = run_mask(policy, ring, str(out / "input"), str(out / "masked"), progress=progress)
    if show is not None:
        show(summary)
        console.print(f"  receipt: {summary.receipt}")
    console.print("[bold]biomask demo[/]: 3/3 verifying the signed lineage")
    public_pem = out / "demo.public.pem"
    public_pem.write_bytes(ring.public_key_pem())
    report = verify(summary.lineage_dir, public_key=public_pem, receipt=summary.receipt)
    console.print(
        f"  lineage verified with {public_pem} and the run's receipt: "
        f"{len(report.checks)} checks passed"
    )
    console.print(
        f"  check it yourself: biomask audit verify {summary.lineage_dir} "
        f"--public-key {public_pem} --receipt {report.receipt}"
    )
    dossier = summary.lineage_dir / "dossier.html"
    if dossier.exists():
        console.print(f"  EU AI Act dossier: {dossier}")
    if data.planted_duplicates is not None:
        from biomask.identity.demo import demo_identity

        demo_identity(out, policy, ring, data.planted_duplicates.num_rows, console)
    before = data.subjects.slice(0, 3).select(["subject_id", "full_name", "email", "phone"])
    after = pq.read_table(out / "masked" / "subjects.parquet").slice(0, 3)
    after = after.select(["subject_id", "full_name", "email", "phone"])
    console.print("  first subjects before -> after:")
    for b, a in zip(before.to_pylist(), after.to_pylist(), strict=True):
        console.print(
            f"    {b['subject_id']} {b['full_name']!s:<24} -> {a['subject_id']} {a['full_name']}"
        )
    return summary.lineage_dir
