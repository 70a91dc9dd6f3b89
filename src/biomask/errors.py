"""The one exception tree of biomask.

Every error a user can provoke with bad input (a policy, a keyring, a file, a URI) is a
:class:`BiomaskError`. The command line prints ``str(error)`` as one line on stderr and
exits non-zero, so every message here must be complete on its own: it names the file,
line, column or field at fault and what to do, and it never carries a data value or key
material (the values being masked are exactly what must not leak into logs).

::

    BiomaskError
    ├── PolicyError            the policy file is invalid (file, line, field)
    ├── KeyringError           the keyring is missing, locked or does not match
    │   └── DecryptionError    a ciphertext did not decrypt (says nothing about why)
    ├── ConnectorError         a source or sink cannot be opened, read or written
    │   └── OutputExistsError  the output exists and --overwrite was not given
    ├── SchemaError            the data does not fit the policy (unlisted column, type)
    ├── QuarantineLimitError   more rows were quarantined than --max-quarantine allows
    ├── LineageError           lineage cannot be written
    │   └── VerificationError  a lineage directory does not verify
    └── MissingDependencyError an optional extra (ray, torch) is not installed
"""

from __future__ import annotations

__all__ = [
    "BiomaskError",
    "ConnectorError",
    "DecryptionError",
    "KeyringError",
    "LineageError",
    "MissingDependencyError",
    "OutputExistsError",
    "PolicyError",
    "QuarantineLimitError",
    "SchemaError",
    "VerificationError",
]


class BiomaskError(Exception):
    """Base of every error biomask raises on purpose.

    Catch this to handle any user-facing failure; anything else escaping biomask is a bug.
    """


class PolicyError(BiomaskError):
    """The policy file is invalid.

    Parameters
    ----------
    message:
        What is wrong and how to fix it.
    path:
        The policy file, when the policy came from a file.
    line:
        1-based line of the offending node, when known.
    field:
        Dotted path of the offending field, e.g. ``columns.dob.op``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")


class KeyringError(BiomaskError):
    """The keyring cannot be used: missing, wrong passphrase, corrupt, or not the one that
    masked the data."""


class DecryptionError(KeyringError):
    """A ciphertext did not decrypt.

    The message is always the same ("decryption failed"): telling a caller *why* (wrong
    key, modified byte, swapped row) would help an attacker probe the scheme.
    """

    def __init__(self) -> None:
        super().__init__("decryption failed")


class ConnectorError(BiomaskError):
    """A source or sink cannot be opened, read or written (names the URI, never credentials)."""


class OutputExistsError(ConnectorError):
    """The output already exists and the caller did not ask to overwrite it."""


class SchemaError(BiomaskError):
    """The data does not fit the policy: an unlisted column, or a type an operator cannot take."""


class QuarantineLimitError(BiomaskError):
    """More rows were quarantined than the run allows (``--max-quarantine``)."""


class LineageError(BiomaskError):
    """Lineage could not be written or read."""


class VerificationError(LineageError):
    """A lineage directory does not verify; the message names the first thing that fails."""


class MissingDependencyError(BiomaskError):
    """An optional extra is needed (e.g. ``pip install 'biomask[ray]'``)."""
