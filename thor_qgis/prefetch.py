"""Reading ahead: the next items of an iterator produced in a background thread while the caller works.

    for tile, arr, valid in read_ahead(source.tiles(layout), ahead=2):
        ...  # the model runs on this tile while the next ones are read and warped

The source runs in one worker thread, item after item, in order; at most ``ahead`` finished items wait
in the queue and the worker holds at most one more (the one it is producing, or waiting to hand over),
so never more than ``ahead + 1`` items exist beyond the one the caller has. An exception raised by the
source is raised to the caller at the point where the item would have come. Closing the iterator
(``close()``, leaving the ``for`` early, garbage collection) stops the worker: it produces nothing more
and the source generator is closed in the worker's thread.

The source is used from the worker thread only, so an object that must stay on one thread at a time
(a GDAL dataset) is fine as long as the caller does not use it while iterating.
"""
from __future__ import annotations

import queue
import threading
from typing import Generic, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

#: Default number of items read ahead (tiles of 10 x 288 x 288 float32: 3.3 MB each).
DEFAULT_AHEAD = 2

_DONE = object()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: "queue.Queue[object]", stop: threading.Event, item: object) -> bool:
    """Hand ``item`` over, waiting for room; False when the reader has gone."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _work(source: Iterator, q: "queue.Queue[object]", stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            try:
                item = next(source)
            except StopIteration:
                _put(q, stop, _DONE)
                return
            except BaseException as exc:  # handed to the reader, raised there
                _put(q, stop, _Failure(exc))
                return
            if not _put(q, stop, item):
                return
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass


class ReadAhead(Generic[T]):
    """An iterator over ``source`` whose items are produced up to ``ahead`` in advance in a thread."""

    def __init__(self, source: Iterable[T], ahead: int = DEFAULT_AHEAD, name: str = "thor-read-ahead"):
        if int(ahead) < 1:
            raise ValueError(f"ahead must be at least 1, got {ahead!r}")
        self.ahead = int(ahead)
        self._source = iter(source)
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=self.ahead)
        self._stop = threading.Event()
        self._finished = False
        # the worker holds the queue, the flag and the source, not this object: an iterator dropped
        # without close() is still collected, and its __del__ stops the worker
        self._thread: Optional[threading.Thread] = threading.Thread(
            target=_work, args=(self._source, self._queue, self._stop), name=name, daemon=True)
        self._thread.start()

    # ---- reader -----------------------------------------------------------------------------

    def __iter__(self) -> "ReadAhead[T]":
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finish()
            raise StopIteration
        if isinstance(item, _Failure):
            self._finish()
            raise item.exc
        return item  # type: ignore[return-value]

    def _finish(self) -> None:
        self._finished = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop reading ahead and wait for the worker to end (it finishes the item in hand first)."""
        if self._thread is None:
            self._finished = True
            return
        self._stop.set()
        while True:  # unblock a worker waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._finish()

    def __enter__(self) -> "ReadAhead[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._thread is not None:
                self._stop.set()
        except Exception:
            pass


def read_ahead(source: Iterable[T], ahead: int = DEFAULT_AHEAD) -> Iterator[T]:
    """``source``'s items, produced up to ``ahead`` in advance in a background thread (see :class:`ReadAhead`).

    A generator wrapper, so that leaving a ``for`` loop early (an error, a cancel) closes the read-ahead
    and stops its worker at once."""
    it = ReadAhead(source, ahead)
    try:
        yield from it
    finally:
        it.close()
