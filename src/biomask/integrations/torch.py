"""The training feed: masked Parquet in, decrypted float32 template tensors out.

Plaintext templates exist only in the training process: each DataLoader worker opens the
keyring itself and decrypts batch by batch in memory; nothing is written. Before yielding
anything, the dataset verifies the signed lineage of the masked data (manifest signature
and file hashes, as ``biomask audit verify`` does) and refuses a file that was changed
after masking or that the manifest does not list: a gate against tampered or poisoned
training data.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from biomask.connectors.overlap import read_ahead
from biomask.errors import MissingDependencyError, VerificationError

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(
        "the training feed needs PyTorch: pip install 'biomask[torch]'"
    ) from exc

__all__ = ["MaskedTemplateDataset", "decrypting_collate_fn", "verified_files"]


def verified_files(
    data: Path,
    lineage_dir: Path,
    public_key: bytes | Path | None = None,
    keyring_path: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """The data files, after checking each is a current output of the signed lineage.

    The lineage is verified with ``public_key`` or, without one, with the public key of the
    keyring the feed decrypts with (opened from ``keyring_path``, which also checks the
    audit entries' MACs): never with the key the directory carries. A file is accepted
    when it is an output of the last completed run that wrote its dataset, so a later
    failed run (over its quarantine limit, say) leaves the good outputs usable.

    Raises
    ------
    VerificationError
        The lineage does not verify (changed file, edited log, wrong key), or a file under
        ``data`` is not among the verified outputs (added after masking).
    """
    from biomask.lineage import verify

    ring = None
    if public_key is None:
        if keyring_path is None:
            raise VerificationError(
                "the training feed needs a trusted public key or the keyring to verify "
                f"{lineage_dir} with"
            )
        from biomask.keys import Keyring

        ring = Keyring.open(keyring_path)
        public_key = ring.public_key_pem()
    report = verify(lineage_dir, public_key=public_key, keyring=ring)
    listed = set(report.outputs)
    files = sorted(data.rglob("*.parquet")) if data.is_dir() else [data]
    for f in files:
        if f.resolve() not in listed:
            raise VerificationError(
                f"{f} is not an output listed in the signed manifest of {lineage_dir}; "
                "refusing to feed it"
            )
    if not files:
        raise VerificationError(f"no Parquet files under {data}")
    return files


class MaskedTemplateDataset(IterableDataset):  # type: ignore[type-arg]
    """Batches of decrypted templates (``[B, dim]`` float32) with their token columns.

    Parameters
    ----------
    data:
        A masked Parquet file or a directory of them (one table of the policy).
    policy:
        The policy that masked the data.
    keyring_path:
        The keyring; each worker opens it with ``BIOMASK_PASSPHRASE``.
    table:
        The policy table the data belongs to (multi-table policies).
    template_column, columns:
        The encrypted column, and the (token) columns to yield alongside.
    lineage_dir:
        The run's lineage directory (default ``<data>.lineage``).
    public_key:
        The auditor's copy of the signing key; without it the keyring's own public key
        (never the key stored in the lineage directory).
    decrypt:
        False yields the ciphertexts as they are stored, as a ``[B, length]`` uint8 tensor
        when every row has the same length (else flat, with ``<column>_offsets``): the same
        loader and the same bytes without the decryption, for measuring its cost.
    """

    def __init__(
        self,
        data: str | os.PathLike[str],
        policy: Any,
        keyring_path: str | os.PathLike[str],
        *,
        table: str | None = None,
        template_column: str = "template",
        columns: Sequence[str] = ("subject_id",),
        batch_size: int = 1024,
        lineage_dir: str | os.PathLike[str] | None = None,
        public_key: bytes | Path | None = None,
        decrypt: bool = True,
    ) -> None:
        from biomask.masking.api import resolve_policy

        self.data = Path(data)
        self.policy = resolve_policy(policy)
        self.keyring_path = Path(keyring_path)
        self.table = table
        self.template_column = template_column
        self.columns = list(columns)
        self.batch_size = batch_size
        self.decrypt = decrypt
        lineage = (
            Path(lineage_dir) if lineage_dir else self.data.with_name(self.data.name + ".lineage")
        )
        self.files = verified_files(self.data, lineage, public_key, self.keyring_path)
        #: every (file, row group), dealt out to DataLoader workers: sharding by file left
        #: all but one worker idle on a one-file output
        self.row_groups = [
            (f, rg) for f in self.files for rg in range(pq.ParquetFile(f).metadata.num_row_groups)
        ]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from biomask.keys import Keyring
        from biomask.masking import Unmasker

        info = get_worker_info()
        groups = self.row_groups
        if info is not None:
            groups = groups[info.id :: info.num_workers]
        unmasker = Unmasker(self.policy, Keyring.open(self.keyring_path), table=self.table)
        entity_cols = {e.column for e in self.policy.entities.values()}
        wanted = list(dict.fromkeys([*self.columns, *entity_cols, self.template_column]))

        def read() -> Iterator[pa.RecordBatch]:
            for f in dict.fromkeys(f for f, _ in groups):
                pf = pq.ParquetFile(f, pre_buffer=False)
                meta = pf.schema_arrow.metadata
                cols = [c for c in wanted if c in pf.schema_arrow.names]
                mine = [rg for g, rg in groups if g == f]
                for batch in pf.iter_batches(
                    batch_size=self.batch_size, row_groups=mine, columns=cols
                ):
                    yield batch.replace_schema_metadata(meta)

        # batches N + 1, N + 2 decode on a thread while this one is decrypted (ciphertext
        # only: the thread never sees a plaintext)
        for batch in read_ahead(read(), depth=2):
            yield self._tensors(unmasker, batch)

    def _tensors(self, unmasker: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.decrypt:
            res = unmasker.mask_batch(batch)
            batch = res.output  # erased subjects' rows went to quarantine: not fed
            col = batch.column(self.template_column)
            dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
            flat = col.flatten()
            if flat.null_count == 0 and pa.types.is_floating(flat.type):
                # the decrypted buffer is fresh and ours: hand it to torch without a copy
                values = _view(flat.buffers()[1], flat.type.to_pandas_dtype(), flat.offset,
                               len(flat))  # fmt: skip
            else:
                values = flat.to_numpy(zero_copy_only=False, writable=True)
            values = values.astype(np.float32, copy=False)
            out[self.template_column] = torch.from_numpy(values.reshape(len(batch), dim or -1))
        else:
            from biomask.masking.operators.encrypt import _binary_parts

            col = batch.column(self.template_column)
            whole, offs = _binary_parts(col)
            start, end = int(offs[0]), int(offs[-1])
            data = whole[start:end] if whole.flags.writeable else whole[start:end].copy()
            lengths = np.diff(offs)
            if len(lengths) and (lengths == lengths[0]).all():
                out[self.template_column] = torch.from_numpy(data.reshape(len(col), -1))
            else:
                out[self.template_column] = torch.from_numpy(data)
                out[self.template_column + "_offsets"] = torch.from_numpy(
                    (offs - start).astype(np.int64)
                )
        for c in self.columns:
            out[c] = batch.column(c).to_pylist()
        return out


def _view(buf: pa.Buffer | None, dtype: Any, offset: int, count: int) -> np.ndarray:
    """``count`` items of ``buf`` from item ``offset`` as a writable array (copied if not)."""
    if buf is None:
        return np.zeros(count, dtype=dtype)
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset * np.dtype(dtype).itemsize)
    return arr if arr.flags.writeable else arr.copy()


def decrypting_collate_fn(
    data: str | os.PathLike[str],
    policy: Any,
    keyring_path: str | os.PathLike[str],
    *,
    table: str | None = None,
    template_column: str = "template",
    columns: Sequence[str] = ("subject_id",),
    lineage_dir: str | os.PathLike[str] | None = None,
    public_key: bytes | Path | None = None,
) -> Any:
    """A Ray Data collate function that decrypts templates in the training process.

    Use it with ``ds.iter_torch_batches(collate_fn=...)`` over ``read_parquet(data)``:
    decryption happens after Ray hands the (still encrypted) Arrow batch to the trainer,
    so plaintext templates never enter Ray's object store, which can spill to disk. The
    data's signed lineage is verified first, as for :class:`MaskedTemplateDataset`, and
    the key ids come from the verified files' metadata (Ray drops it from batches). The
    returned object is thread-safe (Ray calls it from several threads): each thread gets
    its own unmasker.
    """
    from ray.data.collate_fn import ArrowBatchCollateFn

    from biomask.masking.api import resolve_policy

    pol = resolve_policy(policy)
    path = Path(data)
    lineage = Path(lineage_dir) if lineage_dir else path.with_name(path.name + ".lineage")
    files = verified_files(path, lineage, public_key, keyring_path)
    meta = pq.read_schema(files[0]).metadata

    class _Decrypting(ArrowBatchCollateFn):
        def __init__(self) -> None:
            self._local = threading.local()

        def _unmasker(self) -> Any:
            um = getattr(self._local, "unmasker", None)
            if um is None:
                from biomask.keys import Keyring
                from biomask.masking import Unmasker

                um = Unmasker(pol, Keyring.open(keyring_path), table=table)
                self._local.unmasker = um
            return um

        def __call__(self, batch: pa.Table) -> Any:
            out: dict[str, Any] = {}
            for rb in batch.combine_chunks().to_batches() or []:
                res = self._unmasker().mask_batch(rb.replace_schema_metadata(meta))
                col = res.output.column(template_column)
                dim = col.type.list_size
                flat = col.flatten().to_numpy(zero_copy_only=False, writable=True)
                t = torch.from_numpy(flat.astype(np.float32, copy=False).reshape(-1, dim))
                out.setdefault(template_column, []).append(t)
                for c in columns:
                    out.setdefault(c, []).extend(res.output.column(c).to_pylist())
            if template_column in out:
                out[template_column] = torch.cat(out[template_column])
            return out

    return _Decrypting()
