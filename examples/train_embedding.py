"""Train a small embedding model on masked demo data, decrypting templates in memory.

    biomask demo --out demo
    BIOMASK_PASSPHRASE=$(cat demo/demo.passphrase) python examples/train_embedding.py demo

The loader verifies the demo's signed lineage first and refuses changed files; templates
are decrypted batch by batch in the DataLoader workers and never touch disk. The model is a
2-layer MLP (512 -> 256 -> 128) trained so that captures of the same (tokenized) subject
land close together (a supervised contrastive loss); it runs on the GPU when there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from biomask.integrations.torch import MaskedTemplateDataset


def main(demo: Path, epochs: int = 3) -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ds = MaskedTemplateDataset(
        demo / "masked" / "captures.parquet",
        demo / "policy.yaml",
        demo / "demo.keyring",
        table="captures",
        lineage_dir=demo / "masked.lineage",
        batch_size=256,
    )
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        total, batches = 0.0, 0
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
            x = batch["template"].to(dev)
            ids = batch["subject_id"]
            labels = torch.tensor([hash(s) % (1 << 31) for s in ids], device=dev)
            z = nn.functional.normalize(model(x), dim=1)
            sim = z @ z.T / 0.1
            same = (labels[:, None] == labels[None, :]).float()
            eye = torch.eye(len(ids), device=dev)
            pos = same - eye
            if pos.sum() == 0:
                continue
            logp = sim - torch.logsumexp(sim - eye * 1e9, dim=1, keepdim=True)
            loss = -(logp * pos).sum() / pos.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
            batches += 1
        print(
            f"epoch {epoch + 1}: loss {total / max(batches, 1):.4f} over {batches} batches on {dev}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "biomask-demo"))
