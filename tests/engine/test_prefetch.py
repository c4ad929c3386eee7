"""Reading tiles ahead in a background thread: same items in the same order, a bounded look-ahead
(asserted by counting items, not by timing), errors and early exits handled, and the same GeoTIFF
from a real raster with and without it."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from thor_qgis import pipeline
from thor_qgis.prefetch import ReadAhead, read_ahead

WAIT_S = 30  # generous: the worker is only waited for, never timed


class CountingSource:
    """An iterator that counts the items it has produced and lets the test wait for a count."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at
        self.produced = 0
        self.closed = False
        self.threads = set()
        self.cond = threading.Condition()

    def __iter__(self):
        try:
            for i in range(self.n):
                self.threads.add(threading.current_thread().name)
                if i == self.fail_at:
                    raise ValueError(f"unreadable tile {i}")
                with self.cond:
                    self.produced += 1
                    self.cond.notify_all()
                yield i
        finally:
            self.closed = True

    def wait_for(self, count):
        with self.cond:
            return self.cond.wait_for(lambda: self.produced >= count, timeout=WAIT_S)


@pytest.mark.parametrize("ahead", [1, 2, 5])
def test_same_items_in_order(ahead):
    src = CountingSource(17)
    assert list(read_ahead(iter(src), ahead)) == list(range(17))
    assert src.closed
    assert src.threads == {"thor-read-ahead"}  # produced in the worker thread, not the caller's


@pytest.mark.parametrize("ahead", [1, 3])
def test_look_ahead_is_bounded_by_count(ahead):
    """After each item taken, the worker fills up to exactly ``ahead`` waiting items plus the one in its
    hand, and never more: it is blocked until the reader takes the next one."""
    src = CountingSource(12)
    it = ReadAhead(iter(src), ahead)
    taken = 0
    try:
        while True:
            expected = min(src.n, taken + ahead + 1)
            assert src.wait_for(expected)  # it does read ahead ...
            # ... and stops there: the queue is full, so the worker is blocked handing over item `expected`
            # (when not at the end); no extra item can appear until the reader takes one.
            if expected < src.n:
                assert it._queue.full()
            assert src.produced == expected
            assert src.produced - taken <= ahead + 1
            try:
                next(it)
            except StopIteration:
                break
            taken += 1
    finally:
        it.close()
    assert taken == src.n


def test_source_error_arrives_in_place():
    src = CountingSource(6, fail_at=3)
    got = []
    with pytest.raises(ValueError, match="unreadable tile 3"):
        for i in read_ahead(iter(src), 2):
            got.append(i)
    assert got == [0, 1, 2]
    assert src.closed


def test_early_exit_stops_the_worker():
    src = CountingSource(1000)
    gen = read_ahead(iter(src), 2)
    assert next(gen) == 0
    gen.close()  # what leaving a for loop early does
    assert src.closed
    assert src.produced <= 1 + 2 + 1
    assert not any(t.name == "thor-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_abandoned_iterator_stops_its_worker():
    src = CountingSource(1000)
    gen = read_ahead(iter(src), 2)
    next(gen)
    del gen
    gc.collect()
    assert src.closed
    assert src.produced <= 4


def test_ahead_must_be_positive():
    with pytest.raises(ValueError):
        ReadAhead(iter([]), 0)


class TileCounter:
    """Wraps a tile iterator and counts the arrays alive between read and use."""

    def __init__(self, tiles):
        self.tiles, self.read, self.used, self.max_live = tiles, 0, 0, 0

    def __iter__(self):
        for item in self.tiles:
            self.read += 1
            self.max_live = max(self.max_live, self.read - self.used)
            yield item

    def consumed(self, items):
        for item in items:
            self.used += 1
            yield item


def test_raster_grid_identical_with_read_ahead(tmp_path):
    """A real GeoTIFF through RasterSource and the real (tiny, random-weights) model: the grid written with
    read-ahead equals the one written without it, and tiles in memory stay bounded."""
    from osgeo import gdal

    from tests.helpers import write_raster
    from thor_qgis.embedder import Embedder
    from thor_qgis.raster_source import RasterSource
    from thor_qgis.specs import ModelSpec

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 10001, (10, 160, 3 * 96 + 40)).astype(np.float32)
    path = write_raster(tmp_path / "s2.tif", arr, (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    source = RasterSource(path)
    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu", image_size=96,
                             batch_size=2))
    layout = source.layout(source.area(), 96, emb.grid_side())
    assert layout.n_tiles >= 8
    plain = pipeline.write_grid(layout, source.tiles(layout), emb, "mean", str(tmp_path / "plain.tif"))
    counter = TileCounter(source.tiles(layout))
    ahead = pipeline.write_grid(layout, counter.consumed(read_ahead(iter(counter), 2)), emb, "mean",
                                str(tmp_path / "ahead.tif"))
    a = gdal.Open(plain.path).ReadAsArray()
    b = gdal.Open(ahead.path).ReadAsArray()
    assert np.array_equal(a, b)
    assert counter.read == counter.used == layout.n_tiles
    assert 1 <= counter.max_live <= 2 + 1 + 1  # queue + worker's hand + the tile just taken


def test_dropped_read_ahead_object_stops_its_worker():
    src = CountingSource(1000)
    it = ReadAhead(iter(src), 2)
    next(it)
    thread = it._thread
    del it
    gc.collect()
    thread.join(WAIT_S)
    assert not thread.is_alive() and src.closed
