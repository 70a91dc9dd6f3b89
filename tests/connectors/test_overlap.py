"""Read-ahead and write-behind keep order, bound memory and never lose an error."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from biomask.connectors.base import DatasetRef
from biomask.connectors.overlap import WriteBehind, read_ahead


def _batches(n: int) -> list[pa.RecordBatch]:
    return [pa.RecordBatch.from_pydict({"i": [i]}) for i in range(n)]


def test_read_ahead_keeps_order_and_reads_at_most_depth_ahead() -> None:
    produced: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        for b in _batches(6):
            produced.append(b.column(0)[0].as_py())
            yield b

    it = read_ahead(source(), depth=1)
    first = next(it)
    time.sleep(0.2)
    # one batch handed out, one queued, one read and waiting for room: never the whole input
    assert len(produced) <= 3
    rest = list(it)
    assert [b.column(0)[0].as_py() for b in [first, *rest]] == list(range(6))


def test_read_ahead_raises_the_readers_error_at_its_batch() -> None:
    def source():  # type: ignore[no-untyped-def]
        yield from _batches(2)
        raise ValueError("cannot read in.parquet: not a valid Parquet file")

    got = []
    with pytest.raises(ValueError, match="not a valid Parquet file"):
        for b in read_ahead(source()):
            got.append(b)
    assert len(got) == 2


def test_read_ahead_stops_its_worker_when_closed_early() -> None:
    def source():  # type: ignore[no-untyped-def]
        while True:
            yield from _batches(1)

    before = threading.active_count()
    it = read_ahead(source())
    next(it)
    it.close()
    assert threading.active_count() == before


class _Sink:
    def __init__(self, fail_at: int | None = None) -> None:
        self.rows: list[int] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at
        self.committed = self.aborted = False

    def write(self, batch: pa.RecordBatch) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.rows) == self.fail_at:
            raise OSError("cannot write out.parquet: No space left on device")
        self.rows.append(batch.column(0)[0].as_py())

    def commit(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.committed = True

    def abort(self) -> None:
        self.aborted = True

    def ref(self) -> DatasetRef:
        return DatasetRef(uri="out.parquet", namespace="file", name="out.parquet")


def test_write_behind_writes_in_order_on_one_worker_thread() -> None:
    sink = _Sink()
    wb = WriteBehind(sink, depth=2)
    for b in _batches(5):
        wb.write(b)
    wb.commit()
    assert sink.rows == list(range(5)) and sink.committed
    assert len(sink.threads) == 1 and threading.current_thread().name not in sink.threads
    assert wb.ref().name == "out.parquet"


def test_write_behind_failed_write_is_raised_and_nothing_committed() -> None:
    sink = _Sink(fail_at=1)
    wb = WriteBehind(sink)
    with pytest.raises(OSError, match="No space left"):
        for b in _batches(4):
            wb.write(b)
        wb.commit()
    assert not sink.committed
    wb.abort()
    assert sink.aborted


def test_write_behind_abort_after_commit_reaches_the_sink() -> None:
    sink = _Sink()
    wb = WriteBehind(sink)
    wb.write(_batches(1)[0])
    wb.commit()
    wb.abort()  # run_mask aborts every sink when a later one fails to commit
    assert sink.committed and sink.aborted


def test_read_ahead_object_starts_reading_at_once_and_closes() -> None:
    from biomask.connectors.overlap import ReadAhead

    started = threading.Event()

    def source():  # type: ignore[no-untyped-def]
        started.set()
        yield from _batches(3)

    with ReadAhead(source()) as reader:
        assert started.wait(2)  # before anything asked for a batch
        assert [b.column(0)[0].as_py() for b in reader] == [0, 1, 2]
    assert list(reader) == []


def test_a_sealed_output_is_hashed_through_its_handle_even_once_renamed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The commit may rename a small file into place before lineage reads it: the handle
    opened before the commit still reads it, and the digest is the final file's."""
    import hashlib

    from biomask.connectors import open_sink

    final = tmp_path / "out.csv"
    table = pa.table({"a": ["x", "y", "z"], "b": [1, 2, 3]})
    sink = WriteBehind(open_sink(str(final), table.schema))
    sink.write(table.to_batches()[0])
    got: list[str] = []

    def on_sealed(fh) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 10
        while not final.exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # let the worker rename it first: the race this guards
        assert final.exists()
        got.append(hashlib.file_digest(fh, "sha256").hexdigest())

    sink.commit(on_sealed=on_sealed)
    assert got == [hashlib.sha256(final.read_bytes()).hexdigest()]
    assert not list(tmp_path.glob(".out.csv.tmp-*"))
