"""biomask template encryption vs a plain loop over cryptography's AESGCM, one run.

Run:  python bench/templates.py [--n 100000] [--repeat 3] [--subjects 10000]

100k templates of 512 float32 (2048 bytes). biomask runs the ``encrypt`` operator on the
fixed_size_list column (header with key id and data-key id, AAD bound to dataset, table,
column and subject token, random nonce) and the unmasker decrypts back to the original
Arrow type. The peer is a Python loop of ``AESGCM(key).encrypt(nonce, data, aad)`` (and
``decrypt``) over the same bytes with a comparable AAD, keeping its results in a list as
any caller must. The peer's decrypt loop that *discards* each plaintext is printed too: it
never writes 200 MB of output, so it is a lower bound on a loop's time, not a peer; the
loop that joins its plaintexts into one float32 array gives what biomask gives.
Goal: biomask at least 0.9x the plain loop's throughput. Each figure is the best of
``--repeat`` runs (the machine may be shared). A last line times per-subject keys
(``per_entity_key: true``), where each subject's data key comes from the key store.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--subjects", type=int, default=10_000)
    args = ap.parse_args()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from biomask.keys import Keyring
    from biomask.masking import Masker, Unmasker
    from biomask.policies import parse_policy

    n, rep = args.n, args.repeat
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    sids = [f"SUBJ-{i:08d}" for i in range(n)]
    batch = pa.RecordBatch.from_pydict(
        {"sid": sids, "template": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 512)}
    )
    head = "version: 1\ndataset: bench\nentities:\n  subject: {column: sid}\ncolumns:\n"
    policy = parse_policy(head + "  sid: {op: keep}\n  template: {op: encrypt, entity: subject}\n")
    ring = Keyring.ephemeral()
    masker = Masker(policy, ring)
    masker.mask_batch(batch.slice(0, 100))  # warm-up: key store, data key
    t_enc, masked = best(lambda: masker.mask_batch(batch).output, rep)
    unmasker = Unmasker(policy, ring)
    unmasker.mask_batch(masked.slice(0, 100))
    t_dec, back = best(lambda: unmasker.mask_batch(masked).output, rep)
    assert back.column("template").equals(batch.column("template"))

    aead = AESGCM(AESGCM.generate_key(256))
    blobs = [row.tobytes() for row in emb]
    aads = [f"biomask/template/v1|bench|t|template|{s}|".encode() + b"h" * 40 for s in sids]

    def plain_encrypt() -> list[tuple[bytes, bytes]]:
        cts = []
        for data, aad in zip(blobs, aads, strict=True):
            nonce = os.urandom(12)
            cts.append((nonce, aead.encrypt(nonce, data, aad)))
        return cts

    t_penc, cts = best(plain_encrypt, rep)

    def plain_decrypt() -> list[bytes]:
        return [aead.decrypt(nonce, ct, aad) for (nonce, ct), aad in zip(cts, aads, strict=True)]

    def plain_decrypt_discard() -> None:
        for (nonce, ct), aad in zip(cts, aads, strict=True):
            aead.decrypt(nonce, ct, aad)

    def plain_decrypt_to_array() -> np.ndarray:
        # the same result biomask returns: the templates as one float32 array
        return np.frombuffer(b"".join(plain_decrypt()), np.float32).reshape(n, 512)

    t_pdec, _ = best(plain_decrypt, rep)
    t_parr, arr = best(plain_decrypt_to_array, rep)
    assert np.array_equal(arr, emb)
    t_pdis, _ = best(plain_decrypt_discard, rep)

    # per-subject keys: `subjects` distinct subjects, their keys created on the first run
    k = args.subjects
    per = parse_policy(
        head
        + "  sid: {op: keep}\n  template: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    pbatch = batch.set_column(0, "sid", pa.array([sids[i % k] for i in range(n)]))
    pm = Masker(per, ring)
    t = time.perf_counter()
    pout = pm.mask_batch(pbatch).output
    t_first = time.perf_counter() - t
    t_penc2, pout = best(lambda: pm.mask_batch(pbatch).output, rep)
    pu = Unmasker(per, ring)
    t_pdec2, pback = best(lambda: pu.mask_batch(pout).output, rep)
    assert pback.column("template").equals(batch.column("template"))

    mb = n * 2048 / 2**20

    def line(label: str, secs: float) -> str:
        return f"  {label:<34}{n / secs:>10,.0f} templates/s {mb / secs:>7,.0f} MiB/s"

    print(f"{n:,} templates of 2048 bytes ({mb:,.0f} MiB), AES-256-GCM, best of {rep}")
    print(line("biomask encrypt", t_enc))
    print(line("plain loop encrypt", t_penc))
    print(line("biomask decrypt", t_dec))
    print(line("plain loop decrypt", t_pdec))
    print(line("plain loop decrypt, to one array", t_parr))
    print(line("plain loop decrypt, discarding", t_pdis))
    print(
        f"  ratio encrypt {t_penc / t_enc:.2f}x  decrypt {t_pdec / t_dec:.2f}x vs the list loop,"
        f" {t_parr / t_dec:.2f}x vs the loop giving the same array"
        f"  (vs the discarding loop {t_pdis / t_dec:.2f}x)  goal >= 0.9x"
    )
    print(f"per-subject keys, {k:,} subjects (key store {ring.keyring_id}, in memory):")
    print(line("biomask encrypt, keys created", t_first))
    print(line("biomask encrypt, keys exist", t_penc2))
    print(line("biomask decrypt", t_pdec2))


if __name__ == "__main__":
    main()
