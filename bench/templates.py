"""biomask template encryption vs a plain loop over cryptography's AESGCM, one run.

Run:  python bench/templates.py [--n 100000]

100k templates of 512 float32 (2048 bytes). biomask runs the ``encrypt`` operator on the
fixed_size_list column (header, key id, AAD bound to dataset/table/column/subject token,
per-run data key from the key store) and the unmasker decrypts back to the original type;
the peer is a Python loop of ``AESGCM(key).encrypt(nonce, data, aad)`` over the same bytes.
Goal: biomask at least 0.9x the plain loop's throughput.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from biomask.keys import Keyring
    from biomask.masking import Masker, Unmasker
    from biomask.policies import parse_policy

    n = args.n
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    batch = pa.RecordBatch.from_pydict(
        {
            "sid": [f"SUBJ-{i:08d}" for i in range(n)],
            "template": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 512),
        }
    )
    policy = parse_policy(
        "version: 1\ndataset: bench\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: keep}\n  template: {op: encrypt, entity: subject}\n"
    )
    ring = Keyring.ephemeral()
    masker = Masker(policy, ring)
    masker.mask_batch(batch.slice(0, 100))  # warm-up: key store, data key
    t = time.perf_counter()
    out = masker.mask_batch(batch).output
    t_enc = time.perf_counter() - t
    unmasker = Unmasker(policy, ring)
    t = time.perf_counter()
    back = unmasker.mask_batch(out).output
    t_dec = time.perf_counter() - t
    assert back.column("template").equals(batch.column("template"))

    key = AESGCM.generate_key(256)
    aead = AESGCM(key)
    blobs = [row.tobytes() for row in emb]
    aads = [f"bench|t|template|SUBJ-{i:08d}".encode() for i in range(n)]
    t = time.perf_counter()
    cts = []
    for data, aad in zip(blobs, aads, strict=True):
        nonce = os.urandom(12)
        cts.append((nonce, aead.encrypt(nonce, data, aad)))
    t_penc = time.perf_counter() - t
    t = time.perf_counter()
    for (nonce, ct), aad in zip(cts, aads, strict=True):
        aead.decrypt(nonce, ct, aad)
    t_pdec = time.perf_counter() - t
    mb = n * 2048 / 2**20
    print(f"{n:,} templates of 2048 bytes ({mb:,.0f} MiB), AES-256-GCM, one run")
    print(f"  biomask encrypt  {n / t_enc:>10,.0f} templates/s  {mb / t_enc:>7,.0f} MiB/s")
    print(f"  plain loop enc   {n / t_penc:>10,.0f} templates/s  {mb / t_penc:>7,.0f} MiB/s")
    print(f"  biomask decrypt  {n / t_dec:>10,.0f} templates/s  {mb / t_dec:>7,.0f} MiB/s")
    print(f"  plain loop dec   {n / t_pdec:>10,.0f} templates/s  {mb / t_pdec:>7,.0f} MiB/s")
    print(f"  ratio encrypt {t_penc / t_enc:.2f}x  decrypt {t_pdec / t_dec:.2f}x  (goal >= 0.9x)")
    print("  (biomask includes the Arrow column in and out, the header, the AAD and the key id)")


if __name__ == "__main__":
    main()
