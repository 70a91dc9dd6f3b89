"""Arrow IPC (``.arrow``, ``.feather``, ``.ipc``): batches as they are, memory-mapped.

Reading memory-maps the file and takes it batch by batch; the IPC file format is tried
first, then the stream format. Every file's schema is read when the dataset opens, so
drift between files fails before anything is written. Output is the IPC *file* format,
uncompressed, so a training job can memory-map it zero-copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.ipc as ipc

from biomask.connectors.formats.base import schema_drift
from biomask.errors import ConnectorError

__all__ = ["FORMAT", "IpcFormat"]


def _open(path: Path) -> tuple[pa.Schema, Callable[[], Iterator[pa.RecordBatch]]]:
    def bad(exc: BaseException) -> ConnectorError:
        return ConnectorError(f"cannot read {path}: not a valid Arrow IPC file")

    try:
        source = pa.memory_map(str(path), "r")
        try:
            reader = ipc.open_file(source)

            def file_batches() -> Iterator[pa.RecordBatch]:
                try:
                    for i in range(reader.num_record_batches):
                        yield reader.get_batch(i)
                except (pa.ArrowException, OSError) as exc:
                    raise bad(exc) from exc

            return reader.schema, file_batches
        except pa.ArrowInvalid:
            source.seek(0)
            stream = ipc.open_stream(source)

            def stream_batches() -> Iterator[pa.RecordBatch]:
                try:
                    yield from stream
                except (pa.ArrowException, OSError) as exc:
                    raise bad(exc) from exc

            return stream.schema, stream_batches
    except (pa.ArrowException, OSError) as exc:
        raise bad(exc) from exc


class _Reader:
    def __init__(self, files: Sequence[Path]) -> None:
        first = files[0]
        schema = _open(first)[0]
        for f in files[1:]:
            problem = schema_drift(schema, _open(f)[0], f, first)
            if problem:
                raise ConnectorError(problem)
        self._schema = schema

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def batches(self, file: Path, *, first_row: int = 0) -> Iterator[pa.RecordBatch]:
        return _open(file)[1]()

    def columns(self, file: Path, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        for batch in self.batches(file):
            yield batch.select([n for n in names if n in batch.schema.names])

    def row_count(self) -> int | None:
        return None  # not read up front: a stream has no footer to count from


class _Writer:
    def __init__(self, fh: IO[bytes], schema: pa.Schema) -> None:
        # Uncompressed so training jobs can memory-map the file zero-copy.
        self._w: ipc.RecordBatchFileWriter | None = ipc.new_file(fh, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        assert self._w is not None, "write after close"
        self._w.write_batch(batch)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class IpcFormat:
    """Arrow IPC, named ``arrow``: every Arrow type, uncompressed, memory-mappable."""

    name = "arrow"
    suffixes: tuple[str, ...] = (".arrow", ".feather", ".ipc")
    flags_rows = False
    coalesce = False
    projects = False

    def open_dataset(self, files: Sequence[Path], batch_size: int) -> _Reader:
        return _Reader(files)

    def open_writer(self, fh: IO[bytes], schema: pa.Schema) -> _Writer:
        return _Writer(fh, schema)


FORMAT = IpcFormat()
