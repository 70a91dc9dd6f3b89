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
from biomask.errors import VerificationError  # noqa: E402
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
