"""Type stub of the compiled helper (src/biomask/keys/_gcm.c); see biomask.keys.aead.

Buffer arguments are anything with the buffer protocol (bytes, numpy arrays).
"""

from typing import Any

def seal_rows(
    keys: bytes,
    key_idx: Any,
    nonce_buf: Any,
    nonce_at: Any,
    src: Any,
    src_at: Any,
    length: Any,
    prefix: bytes,
    mid: Any,
    mid_off: Any,
    tails: bytes,
    tail_off: Any,
    dst: Any,
    dst_at: Any,
    threads: int,
    /,
) -> bool: ...

open_rows = seal_rows  # the same arguments: src holds ciphertexts, dst gets plaintexts
