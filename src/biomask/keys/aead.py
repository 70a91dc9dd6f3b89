"""AES-256-GCM over the rows of one buffer: the raw AEAD under the ``encrypt`` operator.

A template column is a hundred thousand independent AES-GCM messages of about 2 KiB each.
Called row by row from Python, the call costs as much as the cipher and holds the GIL, so
a batch is sealed or opened here in one call: the compiled helper ``biomask.keys._gcm``
(OpenSSL's EVP AES-256-GCM, built with the package) splits the rows over a few threads
that run without the GIL. Where it could not be built (no C compiler or OpenSSL headers at
install time) the same rows go through a loop over cryptography's ``AESGCM``, with
byte-identical output; ``BIOMASK_NATIVE_AEAD=0`` forces that loop.

This module is a raw primitive, like :mod:`biomask.keys.primitives`: it chooses no nonce
and manages no key. The safe recipe (random nonces, key ids in headers, associated data
bound to the row) is :mod:`biomask.keys.envelope`.

Every row ``i`` of a call uses::

    key   = keys[key_idx[i]]                       (key 0 when key_idx is None)
    nonce = nonce_buf[nonce_at[i] : nonce_at[i] + 12]
    aad   = prefix + mid[mid_off[i] : mid_off[i + 1]] + tails[key_idx[i]]

and reads ``length[i]`` bytes at ``src_at[i]`` and writes at ``dst_at[i]``; a sealed row
is ciphertext followed by its 16-byte tag, as :class:`AESGCM` gives it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biomask._native import AEAD_SWITCH, load

#: the compiled helper; None where the package was installed without a compiler
_gcm = load("biomask.keys._gcm")

__all__ = ["RowKeys", "Rows", "native_available", "open_rows", "seal_rows"]

NONCE = 12
TAG = 16


def native_available() -> bool:
    """Whether the compiled helper is in use (not switched off by ``BIOMASK_NATIVE_AEAD=0``)."""
    return _gcm is not None and os.environ.get(AEAD_SWITCH, "1") != "0"


def _threads(n: int) -> int:
    """Threads for ``n`` rows: one per usable core, at most 8, none idle on small batches.

    ``BIOMASK_AEAD_THREADS`` overrides it, e.g. 1 inside DataLoader workers that already
    use every core.
    """
    env = os.environ.get("BIOMASK_AEAD_THREADS")
    if env and env.isdigit() and int(env) > 0:
        cap = int(env)
    else:
        try:
            cap = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cap = os.cpu_count() or 1
    return max(1, min(cap, 8, n // 1024 or 1))


class RowKeys:
    """The AES-256 keys of one call, in the order ``key_idx`` refers to them.

    A key handle in the Tink sense: it refuses to be pickled and never prints its bytes,
    so a key cannot travel by accident into a Ray object store, a log or an error.
    """

    __slots__ = ("_aeads", "_raw")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("RowKeys takes one or more 32-byte AES-256 keys")
        self._raw = b"".join(keys)
        self._aeads: list[AESGCM] | None = None

    def __len__(self) -> int:
        return len(self._raw) // 32

    def __repr__(self) -> str:
        return f"RowKeys(<{len(self)} keys>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("biomask keys cannot be pickled: open the keyring in each process")

    def _per_key(self) -> list[AESGCM]:
        if self._aeads is None:
            self._aeads = [AESGCM(self._raw[i : i + 32]) for i in range(0, len(self._raw), 32)]
        return self._aeads


@dataclass(frozen=True)
class Rows:
    """Where each row's nonce, input, AAD middle and output are (int64 arrays, one per row).

    ``mid`` and ``mid_off`` are usually an Arrow binary column's data and offsets (the
    rows' entity tokens), read without a copy; ``tails`` ends each AAD, one per key.
    """

    key_idx: np.ndarray | None
    nonce_buf: np.ndarray
    nonce_at: np.ndarray
    src: np.ndarray
    src_at: np.ndarray
    length: np.ndarray
    prefix: bytes
    mid: np.ndarray
    mid_off: np.ndarray
    tails: Sequence[bytes]
    dst: np.ndarray
    dst_at: np.ndarray


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _u8(a: np.ndarray) -> np.ndarray:
    """A byte view of a buffer; an empty one stands in for a missing Arrow buffer."""
    return a if len(a) else np.zeros(1, np.uint8)


def _native(keys: RowKeys, r: Rows, seal: bool) -> bool:
    assert _gcm is not None
    tail_off = np.zeros(len(r.tails) + 1, np.int64)
    np.cumsum([len(t) for t in r.tails], out=tail_off[1:])
    fn = _gcm.seal_rows if seal else _gcm.open_rows
    ok: bool = fn(
        keys._raw,
        None if r.key_idx is None else _i64(r.key_idx),
        _u8(r.nonce_buf), _i64(r.nonce_at), _u8(r.src), _i64(r.src_at), _i64(r.length),
        r.prefix, _u8(r.mid), _i64(r.mid_off), b"".join(r.tails) or b"\0", tail_off,
        r.dst, _i64(r.dst_at), _threads(len(r.length)),
    )  # fmt: skip
    return ok


def _python(keys: RowKeys, r: Rows, seal: bool) -> bool:
    """The same rows through cryptography's AESGCM, one call per row (the fallback)."""
    aeads = keys._per_key()
    nb, src, mid, dst = (x.data.cast("B") for x in (r.nonce_buf, r.src, r.mid, r.dst))
    n = len(r.length)
    which = r.key_idx.tolist() if r.key_idx is not None else [0] * n
    cols = (which, r.nonce_at.tolist(), r.src_at.tolist(), r.length.tolist(),
            r.mid_off[:-1].tolist(), r.mid_off[1:].tolist(), r.dst_at.tolist())  # fmt: skip
    try:
        for k, na, sa, ln, m0, m1, da in zip(*cols, strict=True):
            aad = r.prefix + bytes(mid[m0:m1]) + r.tails[k]
            if seal:
                aeads[k].encrypt_into(nb[na : na + NONCE], src[sa : sa + ln], aad,
                                      dst[da : da + ln + TAG])  # fmt: skip
            else:
                aeads[k].decrypt_into(nb[na : na + NONCE], src[sa : sa + ln + TAG], aad,
                                      dst[da : da + ln])  # fmt: skip
    except (InvalidTag, ValueError):
        if seal:
            raise
        return False
    return True


def seal_rows(keys: RowKeys, rows: Rows) -> None:
    """Encrypt every row into ``rows.dst`` (ciphertext then tag at ``dst_at``)."""
    (_native if native_available() else _python)(keys, rows, True)


def open_rows(keys: RowKeys, rows: Rows) -> bool:
    """Decrypt every row into ``rows.dst``; False when any row fails to verify.

    On False the output holds partial plaintext and must be discarded whole: which row
    failed, and why, is deliberately not said. Positions outside their buffers (they come
    from data files) are a failure like any other, not an exception.
    """
    if not native_available():
        return _python(keys, rows, False)
    try:
        return _native(keys, rows, False)
    except ValueError:
        return False
