"""Pin the public names, like httpx does: changing them is a deliberate act."""

import biomask
from biomask import errors


def test_public_names_are_pinned() -> None:
    assert sorted(biomask.__all__) == sorted(
        [
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
    )
    for name in biomask.__all__:
        assert hasattr(biomask, name), name


def test_exception_tree() -> None:
    tree = {
        errors.PolicyError: errors.BiomaskError,
        errors.KeyringError: errors.BiomaskError,
        errors.DecryptionError: errors.KeyringError,
        errors.ConnectorError: errors.BiomaskError,
        errors.OutputExistsError: errors.ConnectorError,
        errors.SchemaError: errors.BiomaskError,
        errors.QuarantineLimitError: errors.BiomaskError,
        errors.LineageError: errors.BiomaskError,
        errors.VerificationError: errors.LineageError,
        errors.MissingDependencyError: errors.BiomaskError,
    }
    for cls, parent in tree.items():
        assert issubclass(cls, parent)
    assert sorted(errors.__all__) == sorted(c.__name__ for c in [errors.BiomaskError, *tree])


def test_decryption_error_says_nothing() -> None:
    assert str(errors.DecryptionError()) == "decryption failed"
