"""The identity step of ``biomask demo``: calibrate, then filter the masked export.

The demo's templates hold a few planted duplicates (one person enrolled under two ids,
see :func:`biomask.demo.generator.generate`). This step calibrates the masked captures'
threshold at FMR 1e-4 (decrypting the templates in process with the demo keyring) and
filters the export at cosine 0.5, far into the impostor tail of these embeddings, so what
it removes is exactly the planted duplicates; both runs are signed into
``<out>/identity.lineage``.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from biomask.identity.commands import Common, run_calibrate, run_filter
from biomask.keys import Keyring
from biomask.policies import Policy

__all__ = ["DEMO_FMR", "DEMO_THRESHOLD", "demo_identity"]

DEMO_FMR = 1e-4
DEMO_THRESHOLD = 0.5


def demo_identity(out: Path, policy: Policy, ring: Keyring, planted: int, console: Console) -> None:
    """Run the two identity commands on ``<out>/masked`` and print what they found."""
    lineage = out / "identity.lineage"
    cal = run_calibrate(
        Common(
            id_column="subject_id",
            policy=policy,
            keyring=ring,
            lineage_dir=lineage,
            report=out / "identity" / "calibrate.json",
        ),
        str(out / "masked"),
        fmr=DEMO_FMR,
    )
    rep = run_filter(
        Common(
            id_column="subject_id",
            policy=policy,
            keyring=ring,
            lineage_dir=lineage,
            report=out / "identity" / "filter.json",
        ),
        str(out / "masked"),
        str(out / "identity" / "filtered"),
        threshold=DEMO_THRESHOLD,
    )
    console.print(
        f"  identity: threshold {cal['threshold']:.4f} at FMR {DEMO_FMR:g} "
        f"({cal['input']['trials']:,} impostor trials); filtering at cosine "
        f"{DEMO_THRESHOLD} removed {rep['ids_removed']} of {rep['ids_before']:,} ids "
        f"({planted} duplicate identities were planted), rows in {rep['removed_output']}"
    )
    console.print(f"  identity lineage and dossier: {lineage}")
