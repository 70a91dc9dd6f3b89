"""biomask: make biometric enrolment data safe to train on.

The public API is what ``__all__`` lists; everything else is an implementation detail.

>>> import biomask
>>> ring = biomask.Keyring.ephemeral()
>>> masked = biomask.mask(table, "policy.yaml", ring)   # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

from biomask.errors import (
    BiomaskError,
    ConnectorError,
    DecryptionError,
    KeyringError,
    LineageError,
    MissingDependencyError,
    OutputExistsError,
    PolicyError,
    QuarantineLimitError,
    SchemaError,
    VerificationError,
)
from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.api import mask
from biomask.policies import Policy, load_policy, policy_json_schema

if TYPE_CHECKING:
    from biomask.pipeline import RunSummary, run_mask

__version__ = "0.1.0"

__all__ = [
    "BiomaskError",
    "ConnectorError",
    "DecryptionError",
    "Keyring",
    "KeyringError",
    "LineageError",
    "Masker",
    "MissingDependencyError",
    "OutputExistsError",
    "Policy",
    "PolicyError",
    "QuarantineLimitError",
    "RunSummary",
    "SchemaError",
    "VerificationError",
    "__version__",
    "load_policy",
    "mask",
    "policy_json_schema",
    "run_mask",
]


def __getattr__(name: str) -> Any:
    # The pipeline pulls in connectors (ADBC) and lineage (OpenLineage); load it only when
    # used, so ``import biomask`` in a Ray worker or a training job stays light.
    if name in ("RunSummary", "run_mask"):
        from biomask import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'biomask' has no attribute {name!r}")
