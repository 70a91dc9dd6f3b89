"""Overlap reading, masking and writing: a read-ahead source and a write-behind sink.

A mask run is a chain of three steps per batch (decode, mask, encode). Run one after the
other on one thread, each leaves the other cores idle; here the next batch is decoded and
the previous one encoded and compressed on their own threads while the current one is
masked. Arrow's readers and writers release the GIL, so the overlap is real.

Both keep memory bounded by the batch size: at most ``depth`` batches wait in either
queue. Errors are not lost on the worker threads: a failed read is raised by the
iterator at the batch it failed on, and a failed write by the next ``write`` or by
``commit``, which then commits nothing. Each sink is only ever touched by one thread at a
time, and all of a sink's writes, its commit and its abort run on the same worker thread,
in order.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from biomask.connectors.base import DatasetRef, Sealing, Sink

__all__ = ["ReadAhead", "WriteBehind", "read_ahead"]

_DONE = object()


class ReadAhead(Iterator[pa.RecordBatch]):
    """Yield ``batches`` in order while a worker thread reads up to ``depth`` ahead.

    Reading starts at construction, so a caller can start decoding the first batch
    before other set-up work (hashing the inputs for lineage) and overlap the two.
    :meth:`close` (or the end of a ``with`` block) stops the worker at its next batch.
    """

    def __init__(self, batches: Iterable[pa.RecordBatch], depth: int = 1) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._worker = threading.Thread(
            target=self._work, args=(iter(batches),), name="biomask-read", daemon=True
        )
        self._worker.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, batches: Iterator[pa.RecordBatch]) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_DONE)

    def __next__(self) -> pa.RecordBatch:
        if self._done:
            raise StopIteration
        item = self._q.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch: pa.RecordBatch = item
        return batch

    def close(self) -> None:
        """Stop reading; batches not yet taken are dropped."""
        self._done = True
        self._stop.set()
        self._worker.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ahead(batches: Iterable[pa.RecordBatch], depth: int = 1) -> Iterator[pa.RecordBatch]:
    """Yield ``batches`` in order while a worker thread reads up to ``depth`` ahead.

    A generator over :class:`ReadAhead`: closing it early (an error downstream) stops the
    worker at its next batch.
    """
    with ReadAhead(batches, depth) as reader:
        yield from reader


class WriteBehind:
    """A :class:`Sink` whose writes run on a worker thread, at most ``depth`` pending.

    Parameters
    ----------
    sink:
        The sink that does the writing; every call to it happens on the worker thread.
    depth:
        How many batches may wait to be written before :meth:`write` blocks.
    """

    def __init__(self, sink: Sink, depth: int = 1) -> None:
        self.sink = sink
        self.depth = max(1, depth)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="biomask-write")
        self._pending: list[Future[None]] = []
        self._closed = False

    def __getattr__(self, name: str) -> Any:  # sink-specific extras (paths, uri)
        return getattr(self.sink, name)

    def _wait(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()  # raises the write's error here

    def write(self, batch: pa.RecordBatch) -> None:
        """Queue ``batch``; raises the error of an earlier write that failed."""
        self._wait(self.depth - 1)
        self._pending.append(self._pool.submit(self.sink.write, batch))

    def flush(self) -> None:
        """Wait until every queued batch is written."""
        self._wait(0)

    def commit(self, on_sealed: Callable[[io.FileIO], None] | None = None) -> None:
        """Write what is queued, then commit; nothing is committed if a write failed.

        With ``on_sealed``, a sink that can seal its files first (:meth:`FileSink.seal`)
        does so, and ``on_sealed`` is called here with each sealed file, open for reading,
        while the worker fsyncs and renames it: lineage hashes the output during the
        fsync, not after it. The files are opened before the commit starts, so the rename
        cannot take one away.
        """
        try:
            self._wait(0)
            if on_sealed is None or not isinstance(self.sink, Sealing):
                self._pool.submit(self.sink.commit).result()
                return
            sealed = self._pool.submit(self.sink.seal).result()
            with contextlib.ExitStack() as files:
                handles = [files.enter_context(open(p, "rb", buffering=0)) for p in sealed]
                done = self._pool.submit(self.sink.commit)
                try:
                    for fh in handles:
                        on_sealed(fh)
                finally:
                    done.result()
        finally:
            self._close()

    def abort(self) -> None:
        """Drop what is queued and abort the sink (errors of queued writes are ignored)."""
        for f in self._pending:
            f.cancel()
        for f in self._pending:
            if not f.cancelled():
                with contextlib.suppress(BaseException):  # the run is failing already
                    f.result()
        self._pending.clear()
        if self._closed:  # after a commit: the worker is gone, and nothing is queued
            self.sink.abort()
            return
        try:
            self._pool.submit(self.sink.abort).result()
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)

    def ref(self) -> DatasetRef:
        return self.sink.ref()
