"""The AES-256 under masking's FF1 walk and the keys PRF, in the compiled helpers alone.

Run:  python bench/aes.py [--n 65536] [--reps 7]

The raw kernels (no Arrow, no Python loop per value): ``ff1_walk`` on n values of 27 and
40 bits with limits just below ``2**nbits`` (about one FF1 per value), encrypt and
decrypt, and with a limit just over ``2**39`` (about two FF1 per value, the walkers of
each step packed); ``cbc_mac`` seeds of 20-byte values and of values of 5 to 40 bytes (mixed block counts,
as in ids, e-mails and phone numbers); ``ctr_stream`` keystreams of 40
bytes per value. Each case runs on both AES-256 implementations the helpers can use here,
taking turns: OpenSSL's EVP (the peer) and biomask's VAES path where the CPU has it
(``_aes_impl``, the helpers' private switch). It prints the best of ``--reps`` runs of
each in thread CPU time, in nanoseconds per value, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import numpy as np


def best(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: first-touch of the buffers, page faults
    times = []
    for _ in range(reps):
        t = time.thread_time_ns()
        fn()
        times.append(time.thread_time_ns() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65_536)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from biomask.keys import _prf
    from biomask.masking import _kernels

    impls = ["evp"]
    with contextlib.suppress(ValueError):  # no VAES on this CPU: OpenSSL's alone
        _kernels._aes_impl("vaes")
        impls.append("vaes")
    _kernels._aes_impl("evp")
    n, rng = args.n, np.random.default_rng(2026)
    key = rng.bytes(32)
    tweaks = np.frombuffer(rng.bytes(16 * n), np.uint8).reshape(n, 16)
    rows = []
    cases = [  # bit length, limit, decrypt, label
        (27, 2**27 - 2**17, False, "nbits=27 encrypt"),
        (27, 2**27 - 2**17, True, "nbits=27 decrypt"),
        (40, 2**40 - 2**30, False, "nbits=40 encrypt"),
        (40, 2**40 - 2**30, True, "nbits=40 decrypt"),
        (40, 2**39 + 1, False, "nbits=40 limit 2**39+1"),
    ]
    for nbits, top, decrypt, label in cases:
        x0 = rng.integers(0, top, n, dtype=np.uint64)

        def walk(x0: np.ndarray = x0, b: int = nbits, t: int = top, d: bool = decrypt) -> None:
            nb, lim, bad = np.full(n, b, np.int64), np.full(n, t, np.uint64), np.zeros(n, np.uint8)
            _kernels.ff1_walk(key, x0.copy(), nb, tweaks, lim, d, bad)

        rows.append((f"ff1_walk {label}", walk))
    data = rng.bytes(20 * n)
    offsets = np.arange(0, 20 * (n + 1), 20, dtype=np.int64)
    seeds = np.empty((n, 16), np.uint8)
    rows.append(("cbc_mac 20-byte values", lambda: _prf.cbc_mac(key, offsets, data, seeds)))
    mixed = np.concatenate([[0], np.cumsum(rng.integers(5, 41, n))]).astype(np.int64)
    mixed_data = rng.bytes(int(mixed[-1]))
    rows.append(("cbc_mac 5..40-byte values", lambda: _prf.cbc_mac(key, mixed, mixed_data, seeds)))
    lengths = np.full(n, 40, np.int64)
    stream = np.empty(40 * n, np.uint8)
    rows.append(("ctr_stream 40 bytes", lambda: _prf.ctr_stream(key, seeds, lengths, stream)))
    print(f"{n:,} values; best of {args.reps}, thread CPU time, ns per value")
    print(f"  {'':<32} {'OpenSSL EVP':>12} {'biomask VAES':>13}")
    for label, fn in rows:
        got = {}
        for _ in range(2):  # the implementations take turns
            for impl in impls:
                _kernels._aes_impl(impl)
                _prf._aes_impl(impl)
                t = best(fn, args.reps) / n
                got[impl] = min(t, got.get(impl, t))
        if "vaes" in got:
            ratio = got["evp"] / got["vaes"]
            line = f"{got['evp']:12.1f} {got['vaes']:13.1f}   {ratio:.2f}x"
        else:
            line = f"{got['evp']:12.1f} {'(no VAES here)':>13}"
        print(f"  {label:<32} {line}")


if __name__ == "__main__":
    main()
