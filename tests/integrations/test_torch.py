"""The training feed: decrypts in memory, every row once, refuses tampered data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is an optional extra: pip install 'biomask[torch]'"
)

from biomask.cli import main  # noqa: E402
from biomask.demo import generate  # noqa: E402
from biomask.errors import BiomaskError, VerificationError  # noqa: E402
from biomask.integrations.torch import MaskedTemplateDataset  # noqa: E402

POLICY = """\
version: 1
dataset: captures
entities:
  subject: {column: subject_id}
unlisted: drop
columns:
  capture_id: {op: tokenize, domain: capture}
  subject_id: {op: tokenize, domain: subject}
  template:   {op: encrypt, entity: subject, per_entity_key: true}
"""


@pytest.fixture()
def masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, np.ndarray]:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    data = generate(120, seed=4, with_notes=False)
    caps = data.captures.select(["capture_id", "subject_id", "template"])
    Path("in").mkdir()
    half = caps.num_rows // 2
    pq.write_table(caps.slice(0, half), "in/a.parquet")
    pq.write_table(caps.slice(half), "in/b.parquet")
    Path("policy.yaml").write_text(POLICY)
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    assert (
        main(
            [
                "mask",
                "--policy",
                "policy.yaml",
                "--input",
                "in",
                "--output",
                "out",
                "--keyring",
                "k.json",
            ]
        )
        == 0
    )
    templates = np.array(caps.column("template").to_pylist(), dtype=np.float32)
    return tmp_path / "out", tmp_path / "k.json", templates


def test_feed_decrypts_every_row_once(masked: tuple[Path, Path, np.ndarray]) -> None:
    out, ring, templates = masked
    ds = MaskedTemplateDataset(out, out.parent / "policy.yaml", ring, batch_size=50)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [b["template"] for b in loader]
    fed = torch.cat(got).numpy()
    assert fed.dtype == np.float32 and fed.shape == templates.shape
    key = lambda a: np.lexsort(a.T[:4])  # noqa: E731 - order rows the same way
    assert np.array_equal(fed[key(fed)], templates[key(templates)])


def test_feed_refuses_changed_file(masked: tuple[Path, Path, np.ndarray]) -> None:
    out, ring, _ = masked
    victim = sorted(out.glob("*.parquet"))[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    victim.write_bytes(bytes(blob))
    with pytest.raises(VerificationError):
        MaskedTemplateDataset(out, out.parent / "policy.yaml", ring)


def test_feed_refuses_added_file(masked: tuple[Path, Path, np.ndarray]) -> None:
    out, ring, _ = masked
    first = sorted(out.glob("*.parquet"))[0]
    (out / "zz-poison.parquet").write_bytes(first.read_bytes())
    with pytest.raises(VerificationError, match="not an output listed in the signed manifest"):
        MaskedTemplateDataset(out, out.parent / "policy.yaml", ring)


def test_ray_collate_fn_decrypts_in_the_trainer(masked: tuple[Path, Path, np.ndarray]) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra")
    import pyarrow.fs

    from biomask.integrations.torch import decrypting_collate_fn

    out, ring, templates = masked
    files = [str(f) for f in sorted(out.glob("*.parquet"))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_parquet(files, filesystem=pyarrow.fs.LocalFileSystem())
        ds = ds.select_columns(["subject_id", "template"])
        collate = decrypting_collate_fn(out, out.parent / "policy.yaml", ring)
        got = [b["template"] for b in ds.iter_torch_batches(batch_size=64, collate_fn=collate)]
    finally:
        ray.shutdown()
    fed = torch.cat(got).numpy()
    key = lambda a: np.lexsort(a.T[:4])  # noqa: E731
    assert np.array_equal(fed[key(fed)], templates[key(templates)])


def test_feed_without_decryption_yields_the_stored_ciphertexts(
    masked: tuple[Path, Path, np.ndarray],
) -> None:
    out, ring, templates = masked
    ds = MaskedTemplateDataset(out, out.parent / "policy.yaml", ring, batch_size=25, decrypt=False)
    got = list(ds)
    stored = [
        c
        for f in ds.files
        for c in pq.read_table(f, columns=["template"]).column("template").to_pylist()
    ]
    cts = torch.cat([b["template"] for b in got])
    assert cts.dtype == torch.uint8 and cts.shape[0] == len(templates)
    assert [bytes(r) for r in cts.numpy()] == stored
    assert not any(templates[0].tobytes()[:32] in s for s in stored)


def test_feed_stops_early_without_hanging(masked: tuple[Path, Path, np.ndarray]) -> None:
    out, ring, _ = masked
    ds = MaskedTemplateDataset(out, out.parent / "policy.yaml", ring, batch_size=5)
    it = iter(ds)
    first = next(it)
    assert first["template"].shape == (5, 512)
    it.close()  # the read-ahead thread is told to stop and joined, with batches still queued


def test_workers_share_the_row_groups_of_a_single_file(
    masked: tuple[Path, Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sharding by file left all but one DataLoader worker idle on a one-file output."""
    from types import SimpleNamespace

    import biomask.integrations.torch as feed

    out, ring, templates = masked
    files = sorted(out.glob("*.parquet"))
    assert len(files) == 1 and pq.ParquetFile(files[0]).metadata.num_row_groups >= 2
    shares = []
    for wid in (0, 1):
        info = SimpleNamespace(id=wid, num_workers=2)
        monkeypatch.setattr(feed, "get_worker_info", lambda info=info: info)
        ds = MaskedTemplateDataset(out, out.parent / "policy.yaml", ring, batch_size=50)
        shares.append(torch.cat([b["template"] for b in ds]).numpy())
    assert all(len(s) for s in shares)  # both workers have work
    fed = np.concatenate(shares)
    key = lambda a: np.lexsort(a.T[:4])  # noqa: E731 - order rows the same way
    assert np.array_equal(fed[key(fed)], templates[key(templates)])  # each row exactly once


def _mask_one(tmp: Path, table: object, rule: str) -> tuple[Path, Path]:
    """Mask a small table with templates of some type; returns (masked file, keyring)."""
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    tmp.mkdir()
    pq.write_table(table, tmp / "in.parquet")
    policy = tmp / "policy.yaml"
    policy.write_text(
        "version: 1\ndataset: t\nentities:\n  subject: {column: subject_id}\ncolumns:\n"
        f"  subject_id: {{op: tokenize, domain: subject}}\n  emb: {rule}\n"
    )
    keyring = tmp / "k.json"
    if not keyring.exists():
        assert main(["keys", "init", "--keyring", str(keyring)]) == 0
    args = ["mask", "--policy", str(policy), "--input", str(tmp / "in.parquet")]
    args += ["--output", str(tmp / "out.parquet"), "--keyring", str(keyring)]
    assert main(args) == 0
    return tmp / "out.parquet", policy


@pytest.fixture()
def quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    return tmp_path


def _all(ds: MaskedTemplateDataset) -> list[dict[str, object]]:
    return list(ds)


def test_feed_takes_binary_templates(quiet: Path) -> None:
    """``binary`` is a type encrypt takes: the feed reads its bytes as binary_dtype."""
    import pyarrow as pa

    emb = np.arange(40 * 8, dtype=np.float32).reshape(40, 8)
    table = pa.table(
        {
            "subject_id": [f"S-{i:06d}" for i in range(40)],
            "emb": pa.array([r.tobytes() for r in emb], pa.binary()),
        }
    )
    out, policy = _mask_one(quiet / "bin", table, "{op: encrypt, entity: subject}")
    ring = quiet / "bin" / "k.json"
    ds = MaskedTemplateDataset(out, policy, ring, template_column="emb", batch_size=16)
    got = torch.cat([b["emb"] for b in _all(ds)])
    assert got.dtype == torch.float32 and tuple(got.shape) == (40, 8)
    np.testing.assert_array_equal(got.numpy(), emb)
    # opaque bytes: uint8 kept as they are, in a shape of the caller's choosing
    ds = MaskedTemplateDataset(
        out, policy, ring, template_column="emb", binary_dtype="uint8", dtype=None,
        shape=(4, 8),
    )  # fmt: skip
    (batch,) = _all(ds)
    assert batch["emb"].dtype == torch.uint8 and tuple(batch["emb"].shape) == (40, 4, 8)
    assert batch["emb"].numpy().tobytes() == emb.tobytes()


def test_feed_takes_lists_of_float_and_ragged_ones(quiet: Path) -> None:
    import pyarrow as pa

    rows = [np.full(4 + i % 3, i, dtype=np.float64) for i in range(30)]
    table = pa.table(
        {
            "subject_id": [f"S-{i:06d}" for i in range(30)],
            "emb": pa.array([r.tolist() for r in rows], pa.list_(pa.float64())),
        }
    )
    out, policy = _mask_one(quiet / "ragged", table, "{op: encrypt, entity: subject}")
    (batch,) = _all(MaskedTemplateDataset(out, policy, quiet / "ragged" / "k.json",
                                          template_column="emb"))  # fmt: skip
    offs = batch["emb_offsets"].numpy()
    assert batch["emb"].dtype == torch.float32 and offs[0] == 0 and len(offs) == 31
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(batch["emb"].numpy()[offs[i] : offs[i + 1]], r)

    same = pa.table(
        {
            "subject_id": [f"S-{i:06d}" for i in range(30)],
            "emb": pa.array([[float(i)] * 6 for i in range(30)], pa.list_(pa.float32())),
        }
    )
    out, policy = _mask_one(quiet / "lists", same, "{op: encrypt, entity: subject, dim: 6}")
    (batch,) = _all(MaskedTemplateDataset(out, policy, quiet / "lists" / "k.json",
                                          template_column="emb"))  # fmt: skip
    assert tuple(batch["emb"].shape) == (30, 6) and "emb_offsets" not in batch
    assert batch["emb"][7].tolist() == [7.0] * 6


def test_missing_template_column_is_one_clear_error(
    masked: tuple[Path, Path, np.ndarray],
) -> None:
    out, keyring, _ = masked
    with pytest.raises(BiomaskError, match=r"no template column 'face'.*pass template_column="):
        MaskedTemplateDataset(out, "policy.yaml", keyring, template_column="face")
    with pytest.raises(BiomaskError, match=r"no column 'age' \(it has capture_id, subject_id"):
        MaskedTemplateDataset(out, "policy.yaml", keyring, columns=("subject_id", "age"))
