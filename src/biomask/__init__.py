"""biomask: make biometric enrolment data safe to train on.

The public API is what ``__all__`` lists; everything else is an implementation detail.

>>> import biomask
>>> ring = biomask.Keyring.ephemeral()
>>> masked = biomask.mask(table, "policy.yaml", ring)   # doctest: +SKIP
"""

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
from biomask.pipeline import RunSummary, run_mask
from biomask.policies import Policy, load_policy, policy_json_schema

__version__ = "0.1.0"

__all__ = [
    "BiomaskError",
    "ConnectorError",
    "DecryptionError",
    "KeyringError",
    "Keyring",
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
