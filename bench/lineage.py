"""biomask lineage: what checking before appending costs, and what a keyring open costs.

Run:  python bench/lineage.py [--entries 1500]

Part 1 writes an audit log of ``--entries`` keyed entries (typical run details) into a
temporary directory and times, best of three, replaying it as a writer does before its
first append (links and MACs) and as an auditor without the keyring does (links only).

Part 2 times deriving the key-encryption key of a new keyring (scrypt N=2^17, r=8, p=1),
which is what every ``Keyring.open`` pays, best of three.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from biomask.keys import Keyring
from biomask.keys.keyring import _derive_kek, _new_kdf
from biomask.lineage import audit


def best(fn: object, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1500)
    args = ap.parse_args()
    ring = Keyring.ephemeral()
    key = ring.chain_key()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        details = {"phase": "complete", "run_id": "0" * 36, "policy_sha256": "a" * 64}
        for i in range(args.entries):
            audit.append_entry(d, "mask", {**details, "rows_in": i}, key)
        audit._VERIFIED.clear()
        keyed = best(lambda: audit.replay_chain(d, key=key))
        links = best(lambda: audit.replay_chain(d))
    print(f"replay {args.entries} entries, links and MACs (writer): {keyed * 1000:.0f} ms")
    print(f"replay {args.entries} entries, links only (auditor):   {links * 1000:.0f} ms")
    kdf = best(lambda: _derive_kek("a long passphrase", _new_kdf()))
    print(f"scrypt N=2^17 r=8 p=1 (every keyring open): {kdf * 1000:.0f} ms")


if __name__ == "__main__":
    main()
