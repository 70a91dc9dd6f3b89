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

from biomask.connectors.listing import list_data_files
from biomask.connectors.overlap import read_ahead
from biomask.errors import BiomaskError, MissingDependencyError, VerificationError
from biomask.types import binary_parts

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
    files = (
        [f for f in list_data_files(data) if f.suffix == ".parquet"] if data.is_dir() else [data]
    )
    for f in files:
        if f.resolve() not in listed:
            raise VerificationError(
                f"{f} is not an output listed in the signed manifest of {lineage_dir}; "
                "refusing to feed it"
            )
    if not files:
        raise VerificationError(f"no Parquet files under {data}")
    return files


def _prepared_unmasker(
    policy: Any, keyring_path: str | os.PathLike[str], table: str | None, keystore: str | None
) -> Any:
    """An Unmasker for the feed, prepared as every run's is (:meth:`Masker.needs`).

    Decrypting templates needs only the key store (per-subject data keys live there), so
    the run services hold nothing else: the feed reads no column besides its own batches.
    """
    from biomask.keys import Keyring
    from biomask.masking import RunServices, Unmasker

    um = Unmasker(policy, Keyring.open(keyring_path), table=table)
    um.prepare(RunServices(keystore_uri=keystore))
    return um


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
        The encrypted column, and the (token) columns to yield alongside. Both are checked
        against the files' schema before anything is read: a missing one is one clear
        error naming the file and the columns it has.
    binary_dtype:
        What the bytes of a ``binary`` template hold (a NumPy dtype name: ``"float32"``
        for an embedding stored as bytes, ``"uint8"`` for an opaque template). Ignored for
        list columns, whose element type is in the schema.
    dtype:
        The tensor's dtype as a NumPy dtype name (default ``"float32"``, what models
        take); ``None`` keeps the stored element type.
    shape:
        The shape of one template (e.g. ``(16, 32)``); the tensor is ``[B, *shape]``.
        Without it, templates of one length give ``[B, length]`` and templates of
        different lengths (a ``list`` or ``binary`` column may hold them) give the
        values flat with ``<column>_offsets`` (``[B + 1]``, int64) marking each row.
    lineage_dir:
        The run's lineage directory (default ``<data>.lineage``).
    public_key:
        The auditor's copy of the signing key; without it the keyring's own public key
        (never the key stored in the lineage directory).
    keystore:
        Where the run kept its template data keys (default: the keyring's
        ``<keyring>.keystore.sqlite``; a PostgreSQL URI for a shared one).
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
        binary_dtype: str = "float32",
        dtype: str | None = "float32",
        shape: Sequence[int] | None = None,
        keystore: str | None = None,
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
        self.keystore = keystore
        self.layout = _Layout(template_column, binary_dtype, dtype, shape)
        lineage = (
            Path(lineage_dir) if lineage_dir else self.data.with_name(self.data.name + ".lineage")
        )
        self.files = verified_files(self.data, lineage, public_key, self.keyring_path)
        _check_columns(self.files[0], pq.read_schema(self.files[0]), template_column, self.columns)
        #: every (file, row group), dealt out to DataLoader workers: sharding by file left
        #: all but one worker idle on a one-file output
        self.row_groups = [
            (f, rg) for f in self.files for rg in range(pq.ParquetFile(f).metadata.num_row_groups)
        ]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        groups = self.row_groups
        if info is not None:
            groups = groups[info.id :: info.num_workers]
        unmasker = _prepared_unmasker(self.policy, self.keyring_path, self.table, self.keystore)
        entity_cols = {e.column for e in self.policy.entities.values()}
        # a template bound to its row (row_key) needs that row's key to decrypt
        specs = self.policy.table_specs()
        rules = specs[self.table] if self.table is not None else next(iter(specs.values()))
        rule = rules.columns.get(self.template_column)
        key = getattr(rule, "row_key", None)
        row_key = [str(key)] if key is not None else []
        wanted = list(dict.fromkeys([*self.columns, *entity_cols, *row_key, self.template_column]))

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
            batch = _valid_templates(batch, self.template_column)
            out.update(self.layout.tensors(batch.column(self.template_column)))
        else:
            col = batch.column(self.template_column)
            whole, offs = binary_parts(col)
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


_FEEDABLE = "binary, fixed_size_list or list of float (what encrypt takes)"


def _check_columns(file: Path, schema: pa.Schema, template: str, columns: Sequence[str]) -> None:
    """One clear error for a template or token column the masked files do not have."""
    missing = [c for c in [template, *columns] if c not in schema.names]
    if not missing:
        return
    what = "template column" if template in missing else "column"
    candidates = [
        f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]
    hint = (
        f"; encrypted columns there: {', '.join(candidates)} (pass template_column=)"
        if template in missing and candidates
        else ""
    )
    raise BiomaskError(
        f"{file}: no {what} {', '.join(repr(m) for m in missing)} (it has "
        f"{', '.join(schema.names)}){hint}"
    )


def _valid_templates(batch: pa.RecordBatch, column: str) -> pa.RecordBatch:
    """Rows with a template: a null one (none in the input) has nothing to train on."""
    col = batch.column(column)
    return batch.filter(col.is_valid()) if col.null_count else batch


class _Layout:
    """Decrypted template column -> tensors, for every type ``encrypt`` takes."""

    def __init__(
        self,
        column: str,
        binary_dtype: str,
        dtype: str | None,
        shape: Sequence[int] | None,
    ) -> None:
        self.column = column
        try:
            self.binary_dtype = np.dtype(binary_dtype)
            self.dtype = np.dtype(dtype) if dtype is not None else None
        except TypeError as exc:
            raise BiomaskError(f"unknown dtype for the training feed: {exc}") from exc
        self.shape = tuple(shape) if shape is not None else None

    def tensors(self, col: pa.Array | pa.ChunkedArray) -> dict[str, Any]:
        """``{column: [B, ...] tensor}``, plus ``<column>_offsets`` for ragged templates."""
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        typ = col.type
        if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
            if not (pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)):
                raise BiomaskError(
                    f"template column '{self.column}' holds {typ}; the feed takes {_FEEDABLE}"
                )
            flat = col.flatten()
            if flat.null_count == 0 and pa.types.is_floating(flat.type):
                # the decrypted buffer is fresh and ours: hand it to torch without a copy
                values = _view(flat.buffers()[1], flat.type.to_pandas_dtype(), flat.offset,
                               len(flat))  # fmt: skip
            else:
                values = flat.to_numpy(zero_copy_only=False, writable=True)
            if pa.types.is_fixed_size_list(typ):
                offs = np.arange(len(col) + 1, dtype=np.int64) * typ.list_size
            else:
                raw = np.frombuffer(
                    col.buffers()[1],
                    np.int64 if pa.types.is_large_list(typ) else np.int32,
                )[col.offset : col.offset + len(col) + 1]
                offs = raw.astype(np.int64) - int(raw[0])
        elif pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
            whole, byte_offs = binary_parts(col)
            size = self.binary_dtype.itemsize
            lengths = np.diff(byte_offs)
            if len(lengths) and (lengths % size).any():
                raise BiomaskError(
                    f"template column '{self.column}' holds byte strings whose lengths are "
                    f"not a multiple of {size} ({self.binary_dtype}): pass binary_dtype= "
                    "with the type the bytes hold (uint8 for opaque templates)"
                )
            data = whole[int(byte_offs[0]) : int(byte_offs[-1])]
            values = data.view(self.binary_dtype) if len(data) else data.astype(self.binary_dtype)
            if not values.flags.writeable:
                values = values.copy()
            offs = (byte_offs - byte_offs[0]) // size
        else:
            raise BiomaskError(
                f"template column '{self.column}' has type {typ}; the feed takes {_FEEDABLE}"
            )
        if self.dtype is not None:
            values = values.astype(self.dtype, copy=False)
        n = len(col)
        lengths = np.diff(offs)
        same = not len(lengths) or bool((lengths == lengths[0]).all())
        if self.shape is not None:
            per = int(np.prod(self.shape))
            if not same or (len(lengths) and int(lengths[0]) != per):
                raise BiomaskError(
                    f"template column '{self.column}': a template of shape {self.shape} has "
                    f"{per} values; this batch has templates of "
                    f"{sorted({int(x) for x in lengths})[:5]} values"
                )
            return {self.column: torch.from_numpy(values.reshape(n, *self.shape))}
        if same:
            return {self.column: torch.from_numpy(values.reshape(n, -1))}
        return {
            self.column: torch.from_numpy(values),
            self.column + "_offsets": torch.from_numpy(offs.astype(np.int64)),
        }


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
    binary_dtype: str = "float32",
    dtype: str | None = "float32",
    shape: Sequence[int] | None = None,
    keystore: str | None = None,
) -> Any:
    """A Ray Data collate function that decrypts templates in the training process.

    Use it with ``ds.iter_torch_batches(collate_fn=...)`` over ``read_parquet(data)``:
    decryption happens after Ray hands the (still encrypted) Arrow batch to the trainer,
    so plaintext templates never enter Ray's object store, which can spill to disk. The
    data's signed lineage is verified first, as for :class:`MaskedTemplateDataset`, and
    the key ids come from the verified files' metadata (Ray drops it from batches). The
    returned object is thread-safe (Ray calls it from several threads): each thread gets
    its own unmasker. ``template_column``, ``binary_dtype``, ``dtype``, ``shape`` and
    ``keystore`` are those of :class:`MaskedTemplateDataset`; ragged templates are refused
    here (a Ray batch is one tensor per column): pass ``shape``, or use the dataset.
    """
    from ray.data.collate_fn import ArrowBatchCollateFn

    from biomask.masking.api import resolve_policy

    pol = resolve_policy(policy)
    path = Path(data)
    lineage = Path(lineage_dir) if lineage_dir else path.with_name(path.name + ".lineage")
    files = verified_files(path, lineage, public_key, keyring_path)
    schema = pq.read_schema(files[0])
    _check_columns(files[0], schema, template_column, list(columns))
    meta = schema.metadata
    layout = _Layout(template_column, binary_dtype, dtype, shape)

    class _Decrypting(ArrowBatchCollateFn):
        def __init__(self) -> None:
            self._local = threading.local()

        def _unmasker(self) -> Any:
            um = getattr(self._local, "unmasker", None)
            if um is None:
                um = self._local.unmasker = _prepared_unmasker(pol, keyring_path, table, keystore)
            return um

        def __call__(self, batch: pa.Table) -> Any:
            out: dict[str, Any] = {}
            for rb in batch.combine_chunks().to_batches() or []:
                res = self._unmasker().mask_batch(rb.replace_schema_metadata(meta))
                decrypted = _valid_templates(res.output, template_column)
                tensors = layout.tensors(decrypted.column(template_column))
                if template_column + "_offsets" in tensors:
                    raise BiomaskError(
                        f"template column '{template_column}' holds templates of different "
                        "lengths: pass shape= (or use MaskedTemplateDataset, which yields "
                        "them with offsets)"
                    )
                out.setdefault(template_column, []).append(tensors[template_column])
                for c in columns:
                    out.setdefault(c, []).extend(decrypted.column(c).to_pylist())
            if template_column in out:
                out[template_column] = torch.cat(out[template_column])
            return out

    return _Decrypting()
