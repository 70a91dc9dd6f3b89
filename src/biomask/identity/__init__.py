"""Identity hygiene for template sets: FMR calibration, leakage, filtering, splits.

Templates (plain float lists, or ciphertexts of the ``encrypt`` operator decrypted in
process, batch by batch) are compared exactly, tile by tile, in memory bounded by the
block and tile sizes (:mod:`biomask.identity.engine`). Each command is a recorded run with
signed lineage and a report in the dossier. See ``docs/identity.md``.
"""

from biomask.identity.analysis import calibrate_set, kl_divergence, scan_pairs
from biomask.identity.commands import (
    Common,
    run_calibrate,
    run_filter,
    run_leakage,
    run_split,
)
from biomask.identity.engine import pairs_at_or_above
from biomask.identity.templates import IdentityInputError, TemplateSet

__all__ = [
    "Common",
    "IdentityInputError",
    "TemplateSet",
    "calibrate_set",
    "kl_divergence",
    "pairs_at_or_above",
    "run_calibrate",
    "run_filter",
    "run_leakage",
    "run_split",
    "scan_pairs",
]
