"""biomask FF1 vs libffx (and the ff3 package) on the same values, in one run.

Run:  python bench/fpe.py [--n 100000]

Two data sets: random 9-digit strings (radix 10) and random 9-character alphanumeric
document numbers (radix 36). biomask encrypts each set in one vectorized call; libffx and
ff3 encrypt value by value, as their APIs do. biomask's output is checked against libffx's
for every value (mismatches must be 0), and biomask's decryption must give the input back.
ff3 implements FF3-1, a different cipher (biomask does not offer it): its outputs are not
compared, only its speed.
"""

from __future__ import annotations

import argparse
import secrets
import time

import numpy as np

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    import ffx
    import pyarrow as pa
    from ff3 import FF3Cipher

    from biomask.masking.ff1 import FF1, decrypt_strings, encrypt_array, encrypt_strings

    rng = np.random.default_rng(2026)
    key = secrets.token_bytes(16)
    tweak = b"passport"
    sets = {
        "9-digit strings (radix 10)": ("0123456789", 10),
        "9-char doc numbers (radix 36)": (ALNUM, 36),
    }
    print(f"{args.n:,} values per set, AES-128, tweak {tweak!r}")
    worst = float("inf")
    for label, (alpha, radix) in sets.items():
        idx = rng.integers(0, radix, size=(args.n, 9))
        values = ["".join(alpha[i] for i in row) for row in idx]
        ours = FF1(key, radix)
        encrypt_strings(ours, values[:1000], alpha, tweak)  # warm-up
        enc, t_b = timed(encrypt_strings, ours, values, alpha, tweak)
        _, t_core = timed(ours.encrypt, idx, tweak)  # numerals in, numerals out (no str)
        column = pa.array(values, pa.string())
        encrypt_array(ours, column.slice(0, 1000), alpha, tweak)  # warm-up
        col_enc, t_col = timed(encrypt_array, ours, column, alpha, tweak)
        col_mismatch = sum(a != b for a, b in zip(col_enc.to_pylist(), enc, strict=True))
        dec, t_bd = timed(decrypt_strings, ours, enc, alpha, tweak)
        ref = ffx.FF1(key, radix=radix)
        ref_enc, t_l = timed(lambda r=ref, vs=values: [r.encrypt(v, tweak=tweak) for v in vs])
        mismatches = sum(a != b for a, b in zip(enc, ref_enc, strict=True))
        f3 = FF3Cipher.withCustomAlphabet(key.hex(), secrets.token_hex(7), alpha)
        _, t_3 = timed(lambda c=f3, vs=values: [c.encrypt(v) for v in vs])
        n = args.n
        print(f"\n{label}")
        print(
            f"  biomask FF1 column   {n / t_col:>12,.0f} values/s   (Arrow string column in and out, as masking runs it)"
        )
        print(
            f"  biomask FF1 lists    {n / t_b:>12,.0f} values/s   decrypt {n / t_bd:,.0f} values/s (Python str lists)"
        )
        print(
            f"  biomask FF1 core     {n / t_core:>12,.0f} values/s   (numeral arrays, no str conversion)"
        )
        print(f"  libffx FF1           {n / t_l:>12,.0f} values/s")
        print(f"  ff3 (FF3-1)          {n / t_3:>12,.0f} values/s")
        print(
            f"  mismatches vs libffx: {mismatches} (lists), {col_mismatch} (column)   round trip ok: {dec == values}"
        )
        print(
            f"  ratio biomask/libffx: column {t_l / t_col:.1f}x, lists {t_l / t_b:.1f}x   column vs ff3: {t_3 / t_col:.1f}x  (goal >= 50x libffx)"
        )
        worst = min(worst, t_l / t_col)
    print(f"\nlowest column ratio over both sets: {worst:.1f}x")


if __name__ == "__main__":
    main()
