"""biomask identity leakage vs faiss-cpu and a plain numpy floor, on the same templates.

Run:  python bench/identity.py [--n 50000] [--dim 512] [--repeat 3] [--rss 50000,200000]
      python bench/identity.py --device cuda          (on a GPU machine; one command)

Two sets of ``--n`` templates of ``--dim`` float32 (random unit vectors, plus ``--planted``
noisy copies of set a's templates in set b, so there is something to find) are compared at
cosine ``--threshold``. The contenders take turns, best of ``--repeat``:

- biomask: the whole ``identity leakage`` run on Parquet files whose templates are
  encrypted by the ``encrypt`` operator: reading, decrypting batch by batch with the
  keyring, the exact tiled scan, writing the pairs and the signed lineage;
- faiss-cpu: ``IndexFlatIP`` over b's plain unit vectors (already in memory) and
  ``range_search`` of a's at the same threshold, the exact search faiss offers;
- numpy floor: plain 4096 x 4096 tiles of ``a @ b.T``, each followed by
  ``nonzero(s >= t)``, over the same in-memory vectors: what the matrix products alone
  cost with numpy's BLAS here.

All three must find the same pair set (checked). Goals: biomask >= 1.0x faiss-cpu and
>= 0.8x the numpy floor, decryption included. The last part runs ``identity leakage``
alone in a fresh process for each ``--rss`` size (n x n) and prints its peak RSS: memory
must be bounded by the block and tile sizes, not the set sizes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

POLICY = """\
version: 1
dataset: bench-identity
entities:
  subject: {column: subject_id}
columns:
  subject_id: {op: keep}
  template:   {op: encrypt, entity: subject}
"""


def make_sets(n: int, dim: int, planted: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm sets a and b; b's first ``planted`` rows are noisy copies of a's."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = rng.standard_normal((n, dim), dtype=np.float32)
    k = min(planted, n)
    b[:k] = a[rng.choice(n, size=k, replace=False)] + rng.standard_normal(
        (k, dim), dtype=np.float32
    ) * np.float32(0.6 / np.sqrt(dim))
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a, b


def write_encrypted(path: Path, prefix: str, vectors: np.ndarray, tmp: Path) -> None:
    """Encrypt the templates with biomask's encrypt operator into ``path`` (setup)."""
    from biomask.keys import Keyring
    from biomask.pipeline import run_mask
    from biomask.policies import load_policy

    n, dim = vectors.shape
    plain = tmp / f"plain-{path.name}"
    ids = pa.array([f"{prefix}{i:08d}" for i in range(n)])
    tpl = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    pq.write_table(pa.table({"subject_id": ids, "template": tpl}), plain)
    ring = Keyring.open(tmp / "bench.keyring")
    run_mask(load_policy(tmp / "policy.yaml"), ring, str(plain), str(path), overwrite=True)
    plain.unlink()


def run_biomask(tmp: Path, device: str = "cpu", threshold: float = 0.3) -> tuple[float, set]:
    from biomask.identity.commands import Common, run_leakage
    from biomask.keys import Keyring
    from biomask.policies import load_policy

    opts = Common(
        id_column="subject_id",
        policy=load_policy(tmp / "policy.yaml"),
        keyring=Keyring.open(tmp / "bench.keyring"),
        lineage_dir=tmp / "leak.lineage",
        report=tmp / "leak.json",
        device=device,
        overwrite=True,
    )
    t = time.perf_counter()
    run_leakage(
        opts, str(tmp / "a.parquet"), str(tmp / "b.parquet"),
        threshold=threshold, output=str(tmp / "pairs.parquet"),
    )  # fmt: skip
    secs = time.perf_counter() - t
    p = pq.read_table(tmp / "pairs.parquet", columns=["a_row", "b_row"])
    return secs, set(zip(p["a_row"].to_pylist(), p["b_row"].to_pylist(), strict=True))


def run_faiss(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[float, set]:
    import faiss

    t = time.perf_counter()
    index = faiss.IndexFlatIP(a.shape[1])
    index.add(b)
    lims, _, ids = index.range_search(a, threshold)
    secs = time.perf_counter() - t
    rows = np.repeat(np.arange(len(a)), np.diff(lims).astype(np.int64))
    return secs, set(zip(rows.tolist(), ids.tolist(), strict=True))


def run_numpy(
    a: np.ndarray, b: np.ndarray, threshold: float, tile: int = 4096
) -> tuple[float, set]:
    """The floor: tiles of ``a @ b.T`` (4096 x 4096, 64 MiB) and ``nonzero`` on each."""
    t = time.perf_counter()
    found = []
    thr = np.float32(threshold)
    for r0 in range(0, len(a), tile):
        for c0 in range(0, len(b), tile):
            s = a[r0 : r0 + tile] @ b[c0 : c0 + tile].T
            i, j = np.nonzero(s >= thr)
            found.append((i + r0, j + c0))
    secs = time.perf_counter() - t
    return secs, {(int(i), int(j)) for ii, jj in found for i, j in zip(ii, jj, strict=True)}


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB.

    Not ``ru_maxrss``: Linux carries that over an ``exec`` from the forking parent, so a
    child started by this driver (which holds both plain sets and the floor's tiles) would
    report the driver's peak. ``VmHWM`` belongs to the process's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(n: int, dim: int, tmp: Path, threshold: float) -> tuple[float, float]:
    """``identity leakage`` of n x n encrypted templates in a fresh process: (MiB, s)."""
    sub = tmp / f"rss-{n}"
    sub.mkdir(exist_ok=True)
    (sub / "policy.yaml").write_text(POLICY)
    os.link(tmp / "bench.keyring", sub / "bench.keyring")
    a, b = make_sets(n, dim, 100, seed=n)
    write_encrypted(sub / "a.parquet", "A", a, sub)
    write_encrypted(sub / "b.parquet", "B", b, sub)
    del a, b
    code = (
        "import sys;"
        f"sys.path.insert(0, {str(HERE)!r});"
        "from identity import peak_rss_mib, run_biomask;"
        "from pathlib import Path;"
        f"s, _ = run_biomask(Path({str(sub)!r}), 'cpu', {threshold!r});"
        "print(peak_rss_mib(), s)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    rss, secs = out.stdout.split()
    return float(rss), float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="templates per set")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--planted", type=int, default=50, help="b templates copied from a")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (best kept)")
    ap.add_argument("--device", default="cpu", help="biomask's device: cpu or cuda")
    ap.add_argument("--rss", default="50000,200000", help="n for the RSS runs ('' to skip)")
    args = ap.parse_args()
    if args.device != "cpu":
        from biomask.errors import BiomaskError
        from biomask.identity.engine import backend_for

        try:
            backend_for(args.device)
        except BiomaskError as exc:
            sys.exit(f"bench/identity.py: {exc}")
    from biomask.keys import Keyring

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "policy.yaml").write_text(POLICY)
        Keyring.create(tmp / "bench.keyring", "bench passphrase")
        os.environ["BIOMASK_PASSPHRASE"] = "bench passphrase"
        a, b = make_sets(args.n, args.dim, args.planted)
        write_encrypted(tmp / "a.parquet", "A", a, tmp)
        write_encrypted(tmp / "b.parquet", "B", b, tmp)
        bs, fs, ns = [], [], []
        sets = []
        for _ in range(args.repeat):  # taking turns: a slow spell hits every contender
            secs, got_b = run_biomask(tmp, args.device, args.threshold)
            bs.append(secs)
            secs, got_f = run_faiss(a, b, args.threshold)
            fs.append(secs)
            secs, got_n = run_numpy(a, b, args.threshold)
            ns.append(secs)
            sets.append((got_b, got_f, got_n))
        for got_b, got_f, got_n in sets:
            if not got_b == got_f == got_n:
                sys.exit(
                    f"pair sets differ: biomask {len(got_b)}, faiss {len(got_f)}, numpy "
                    f"{len(got_n)} (only in biomask: {len(got_b - got_f)}, only in faiss: "
                    f"{len(got_f - got_b)})"
                )
        bb, ff, nn = min(bs), min(fs), min(ns)
        pairs = args.n * args.n
        print(
            f"leakage {args.n:,} x {args.n:,} templates of {args.dim} float32 at cosine >= "
            f"{args.threshold}: {len(sets[0][0])} pairs, the same set from all three; best of "
            f"{args.repeat} (taking turns)"
        )
        each = ", ".join(f"{x:.2f}" for x in bs)
        print(
            f"  biomask ({args.device}, encrypted Parquet in, decryption + lineage included) "
            f"{pairs / bb / 1e9:6.2f} G pairs/s  ({each} s)"
        )
        each = ", ".join(f"{x:.2f}" for x in fs)
        print(f"  faiss-cpu IndexFlatIP.range_search (vectors in memory) "
              f"{pairs / ff / 1e9:6.2f} G pairs/s  ({each} s)")  # fmt: skip
        each = ", ".join(f"{x:.2f}" for x in ns)
        print(f"  numpy tiled matmul floor (vectors in memory)            "
              f"{pairs / nn / 1e9:6.2f} G pairs/s  ({each} s)")  # fmt: skip
        print(f"  ratio biomask/faiss-cpu: {ff / bb:.2f}x  (goal >= 1.0x)")
        print(f"  ratio biomask/numpy floor: {nn / bb:.2f}x  (goal >= 0.8x)")
        sizes = [int(x) for x in args.rss.split(",") if x]
        del a, b
        for n in sizes:
            rss, secs = rss_child(n, args.dim, tmp, args.threshold)
            print(
                f"  biomask {n:>7,} x {n:,}: peak RSS {rss:,.0f} MiB, {secs:.1f} s "
                f"({n * n / secs / 1e9:.2f} G pairs/s)"
            )
        me = peak_rss_mib()
        print(f"  (this driver process, holding both plain sets for faiss/numpy: {me:,.0f} MiB)")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("BIOMASK_NO_PROGRESS", "1")
    main()
