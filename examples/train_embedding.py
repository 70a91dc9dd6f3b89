"""Train a small embedding model on masked demo data, decrypting templates in memory.

    biomask demo --out demo
    BIOMASK_PASSPHRASE=$(cat demo/demo.passphrase) python examples/train_embedding.py demo

or on any masked captures table (``examples/first_hour.sh`` does this):

    python examples/train_embedding.py --data masked/captures.parquet --policy policy.yaml \
        --keyring keys.json --lineage masked.lineage --epochs 1

The loader verifies the demo's signed lineage first and refuses changed files; templates
are decrypted batch by batch in the DataLoader workers and never touch disk. The model is a
2-layer MLP (512 -> 256 -> 128) trained so that captures of the same (tokenized) subject
land close together (a supervised contrastive loss); it runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from biomask.integrations.torch import MaskedTemplateDataset


def main(
    demo: Path | None = None,
    epochs: int = 3,
    *,
    data: Path | None = None,
    policy: Path | None = None,
    keyring: Path | None = None,
    lineage: Path | None = None,
    table: str = "captures",
    template_column: str = "template",
    id_column: str = "subject_id",
) -> None:
    """Train on ``demo``'s masked captures, or on ``data`` with its policy, keyring, lineage."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if demo is not None:
        data = data or demo / "masked" / "captures.parquet"
        policy = policy or demo / "policy.yaml"
        keyring = keyring or demo / "demo.keyring"
        lineage = lineage or demo / "masked.lineage"
    if data is None or policy is None or keyring is None:
        raise SystemExit("give a demo directory, or --data, --policy and --keyring")
    ds = MaskedTemplateDataset(
        data,
        policy,
        keyring,
        table=table,
        template_column=template_column,
        columns=(id_column,),
        lineage_dir=lineage,
        batch_size=256,
    )
    dim = next(iter(ds))[template_column].shape[1]  # 512 in the demo
    model = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 128)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        total, batches = 0.0, 0
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
            x = batch[template_column].to(dev)
            ids = batch[id_column]
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
            total += float(loss.detach())
            batches += 1
        print(
            f"epoch {epoch + 1}: loss {total / max(batches, 1):.4f} over {batches} batches on {dev}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo", nargs="?", type=Path, help="a 'biomask demo' output directory")
    ap.add_argument("--data", type=Path, help="masked Parquet file or directory")
    ap.add_argument("--policy", type=Path, help="the policy that masked it")
    ap.add_argument("--keyring", type=Path, help="its keyring (BIOMASK_PASSPHRASE)")
    ap.add_argument("--lineage", type=Path, help="its lineage (default: <data>.lineage)")
    ap.add_argument("--table", default="captures", help="the policy table of --data")
    ap.add_argument("--template-column", default="template")
    ap.add_argument("--id-column", default="subject_id", help="the (tokenized) subject id")
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    if a.demo is None and a.data is None:
        a.demo = Path("biomask-demo")
    main(
        a.demo, a.epochs, data=a.data, policy=a.policy, keyring=a.keyring, lineage=a.lineage,
        table=a.table, template_column=a.template_column, id_column=a.id_column,
    )  # fmt: skip
