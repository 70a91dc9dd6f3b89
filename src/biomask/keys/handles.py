"""Key handles: key material that refuses to be printed or pickled.

Modelled on Tink's key handles. Raw bytes live only inside these objects; operators hold a
handle and hand it to a primitive (:mod:`biomask.keys.primitives`), never the bytes. A
handle's ``repr`` shows its key id and purpose, and pickling raises, so key material cannot
leak through logs, tracebacks, multiprocessing or Ray's object store by accident.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["KeyHandle"]


class KeyHandle:
    """Secret bytes bound to a key id and a purpose.

    Parameters
    ----------
    secret:
        The key bytes. Kept private; only biomask primitives read them.
    key_id:
        Hex id of the master key this key was derived from (goes into lineage and headers).
    purpose:
        What the key is for, e.g. ``"tokenize/subject"``; part of the HKDF info, so keys
        for different purposes are independent.
    """

    __slots__ = ("__secret", "key_id", "purpose")

    def __init__(self, secret: bytes, key_id: str, purpose: str) -> None:
        self.__secret = bytes(secret)
        self.key_id = key_id
        self.purpose = purpose

    def _secret(self) -> bytes:
        """Hazmat: the raw key bytes. Only primitives in biomask call this."""
        return self.__secret

    def __repr__(self) -> str:
        return f"KeyHandle(key_id={self.key_id!r}, purpose={self.purpose!r}, secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "biomask key handles cannot be pickled: open the keyring in each process instead"
        )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        self.__reduce__()
        raise AssertionError  # pragma: no cover

    def __copy__(self) -> KeyHandle:
        return self

    def __deepcopy__(self, memo: object) -> KeyHandle:
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyHandle):
            return NotImplemented
        import hmac

        return (
            self.key_id == other.key_id
            and self.purpose == other.purpose
            and hmac.compare_digest(self.__secret, other.__secret)
        )

    def __hash__(self) -> int:
        return hash((self.key_id, self.purpose))
