import pytest

from biomask.keys import Keyring


@pytest.fixture(scope="session")
def ring() -> Keyring:
    return Keyring.ephemeral()
