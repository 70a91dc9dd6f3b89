"""biomask template encryption vs a plain loop over cryptography's AESGCM, one run.

Run:  python bench/templates.py [--n 100000] [--repeat 5] [--subjects 10000]

100k templates of 512 float32 (2048 bytes). biomask runs the ``encrypt`` operator on the
fixed_size_list column (header with key id and data-key id, AAD bound to dataset, table,
column and subject token, random nonce) and the unmasker decrypts back to the original
Arrow type. The peer is a Python loop of ``AESGCM(key).encrypt(nonce, data, aad)`` (and
``decrypt``) over the same bytes with a comparable AAD, keeping its results in a list as
any caller must. The peer's decrypt loop that *discards* each plaintext is printed too: it
never writes 200 MB of output, so it is a lower bound on a loop's time, not a peer; the
loop that joins its plaintexts into one float32 array gives what biomask gives.
Goal: biomask at least 0.9x the plain loop's throughput. biomask seals and opens a batch
in one call to its compiled helper (OpenSSL, rows split over one thread per core); the
first line says which path ran, and ``BIOMASK_AEAD_THREADS=1`` pins it to one core. Each figure is the best of
``--repeat`` runs, the contenders taking turns so that a slow spell of a shared machine
hits all of them. A last line times per-subject keys
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


def race(
    fns: dict[str, Callable[[], Any]], repeat: int, *, hold: bool = False
) -> dict[str, tuple[float, Any]]:
    """Best wall time of each function and its last result, the functions taking turns.

    Taking turns (a, b, c, a, b, c, ...) rather than running each ``repeat`` times in a row
    means a slow spell of a shared machine hits every contender, not only one of them.
    ``hold=False`` drops a function's last result before it runs again, as a pipeline that
    writes each batch out does; ``hold=True`` keeps it until the new one is made, as a
    consumer that still uses batch N while N + 1 is decrypted does. Which memory each
    contender gets back from its allocator differs between the two, by up to 30% here.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            if not hold:
                results[name] = None
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {k: (min(v), results[k]) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
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
    unmasker = Unmasker(policy, ring)
    masked = masker.mask_batch(batch).output
    unmasker.mask_batch(masked.slice(0, 100))

    aead = AESGCM(AESGCM.generate_key(256))
    blobs = [row.tobytes() for row in emb]
    aads = [f"biomask/template/v1|bench|t|template|{s}|".encode() + b"h" * 40 for s in sids]

    def plain_encrypt() -> list[tuple[bytes, bytes]]:
        cts = []
        for data, aad in zip(blobs, aads, strict=True):
            nonce = os.urandom(12)
            cts.append((nonce, aead.encrypt(nonce, data, aad)))
        return cts

    cts = plain_encrypt()

    def plain_decrypt() -> list[bytes]:
        return [aead.decrypt(nonce, ct, aad) for (nonce, ct), aad in zip(cts, aads, strict=True)]

    def plain_decrypt_discard() -> None:
        for (nonce, ct), aad in zip(cts, aads, strict=True):
            aead.decrypt(nonce, ct, aad)

    def plain_decrypt_to_array() -> np.ndarray:
        # the same result biomask returns: the templates as one float32 array
        return np.frombuffer(b"".join(plain_decrypt()), np.float32).reshape(n, 512)

    regimes = {}
    for hold in (False, True):
        enc = race(
            {"biomask": lambda: masker.mask_batch(batch).output, "plain": plain_encrypt},
            rep,
            hold=hold,
        )
        dec = race(
            {
                "biomask": lambda: unmasker.mask_batch(masked).output,
                "list": plain_decrypt,
                "array": plain_decrypt_to_array,
                "discard": plain_decrypt_discard,
            },
            rep,
            hold=hold,
        )
        assert dec["biomask"][1].column("template").equals(batch.column("template"))
        assert np.array_equal(dec["array"][1], emb)
        regimes[hold] = {f"enc {k}": v[0] for k, v in enc.items()}
        regimes[hold].update({f"dec {k}": v[0] for k, v in dec.items()})
        del enc, dec

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
    t_penc2, pout = race({"e": lambda: pm.mask_batch(pbatch).output}, rep)["e"]
    pu = Unmasker(per, ring)
    t_pdec2, pback = race({"d": lambda: pu.mask_batch(pout).output}, rep)["d"]
    assert pback.column("template").equals(batch.column("template"))

    mb = n * 2048 / 2**20

    def line(label: str, secs: float) -> str:
        return f"  {label:<34}{n / secs:>10,.0f} templates/s {mb / secs:>7,.0f} MiB/s"

    from biomask.keys import aead as bm_aead

    how = (f"compiled helper, {bm_aead._threads(n)} thread(s)" if bm_aead.native_available()
           else "Python loop over AESGCM (helper not built or BIOMASK_NATIVE_AEAD=0)")  # fmt: skip
    print(f"{n:,} templates of 2048 bytes ({mb:,.0f} MiB), AES-256-GCM, best of {rep}")
    print(f"biomask's AES-GCM: {how}; BIOMASK_AEAD_THREADS=1 measures one core")
    worst = {"encrypt": 99.0, "decrypt": 99.0}
    for hold, t in regimes.items():
        print("last batch still held while the next is made:" if hold else
              "last batch released before the next is made:")  # fmt: skip
        print(line("biomask encrypt", t["enc biomask"]))
        print(line("plain loop encrypt", t["enc plain"]))
        print(line("biomask decrypt", t["dec biomask"]))
        print(line("plain loop decrypt", t["dec list"]))
        print(line("plain loop decrypt, to one array", t["dec array"]))
        print(line("plain loop decrypt, discarding", t["dec discard"]))
        r_enc, r_dec = t["enc plain"] / t["enc biomask"], t["dec list"] / t["dec biomask"]
        worst = {"encrypt": min(worst["encrypt"], r_enc), "decrypt": min(worst["decrypt"], r_dec)}
        print(
            f"  ratio encrypt {r_enc:.2f}x  decrypt {r_dec:.2f}x vs the list loop,"
            f" {t['dec array'] / t['dec biomask']:.2f}x vs the loop giving the same array"
            f"  (vs the discarding loop {t['dec discard'] / t['dec biomask']:.2f}x)"
        )
    print(
        f"worse of the two: encrypt {worst['encrypt']:.2f}x  decrypt {worst['decrypt']:.2f}x"
        "  goal >= 0.9x"
    )
    print(f"per-subject keys, {k:,} subjects (key store {ring.keyring_id}, in memory):")
    print(line("biomask encrypt, keys created", t_first))
    print(line("biomask encrypt, keys exist", t_penc2))
    print(line("biomask decrypt", t_pdec2))


if __name__ == "__main__":
    main()
