"""Keys: the keyring, key handles and deterministic primitives; the only room with raw key bytes."""

from biomask.keys.handles import KeyHandle
from biomask.keys.keyring import PASSPHRASE_ENV, Keyring
from biomask.keys.primitives import DeterministicPrf

__all__ = ["PASSPHRASE_ENV", "DeterministicPrf", "KeyHandle", "Keyring"]
