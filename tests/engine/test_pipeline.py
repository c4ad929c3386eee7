"""pipeline.write_grid with a stand-in model: windows, nodata cells, batches, cancel, file layout."""
import os

import numpy as np
import pytest
from osgeo import gdal

from thor_qgis import gdal_io, pipeline, tiling
from thor_qgis.errors import ThorCanceled


class CountingModel:
    """Stands in for Embedder: each tile's grid is its tile index, so windows can be checked."""

    batch_size = 3
    metadata = {"model_key": "stand-in", "weights": {"source": "random"}}

    def __init__(self, channels=4, side=18):
        self.channels, self.side, self.batches = channels, side, []

    def grid_channels(self, merge):
        return self.channels

    def grid_side(self):
        return self.side

    def grid_info(self, merge):
        return {"group_merge": merge}

    def grid(self, x, group_merge="mean"):
        self.batches.append(x.shape[0])
        # channel c of tile with mean value v is v + c
        v = x.mean(axis=(1, 2, 3))
        return (v[:, None, None, None] + np.arange(self.channels)[None, :, None, None]
                + np.zeros((1, 1, self.side, self.side))).astype(np.float32)


def _layout(tx, ty):
    return tiling.layout_for_area((0, 0, tx * 2880.0, ty * 2880.0), "EPSG:32632", 10, 288, 18)


def _tiles(layout, value_of=lambda t: t.index + 1):
    for t in layout.tiles():
        yield t, np.full((10, 288, 288), value_of(t), np.float32)


def test_each_tile_lands_in_its_window(tmp_path):
    layout = _layout(4, 2)
    model = CountingModel()
    res = pipeline.write_grid(layout, _tiles(layout), model, "mean", str(tmp_path / "g.tif"))
    ds = gdal.Open(res.path)
    arr = ds.ReadAsArray()
    assert arr.shape == (4, 36, 72)
    for t in layout.tiles():
        x, y, w, h = layout.output_window(t)
        np.testing.assert_array_equal(arr[0, y:y + h, x:x + w], t.index + 1)
        np.testing.assert_array_equal(arr[3, y:y + h, x:x + w], t.index + 4)
    assert ds.GetGeoTransform() == (0.0, 160.0, 0.0, 5760.0, 0.0, -160.0)
    # batches are full even across rows of tiles (4 tiles a row, batch size 3)
    assert model.batches == [3, 3, 2]


def test_tiles_and_cells_without_data_are_nodata(tmp_path):
    layout = _layout(2, 1)

    def tiles():
        a = np.full((10, 288, 288), 500.0, np.float32)
        a[:, :, 100:] = 0.0  # only the first 100 columns hold data: cells 0..6 (16 px each)
        yield next(layout.tiles()), a
        yield list(layout.tiles())[1], np.zeros((10, 288, 288), np.float32)  # no data at all

    res = pipeline.write_grid(layout, tiles(), CountingModel(), "mean", str(tmp_path / "g.tif"))
    arr = gdal.Open(res.path).ReadAsArray()
    nodata = np.all(arr == pipeline.GRID_NODATA, axis=0)
    expected = np.ones((18, 36), bool)
    expected[:, :7] = False
    np.testing.assert_array_equal(nodata, expected)
    assert res.tiles_embedded == 1


def test_cells_with_data_uneven_sizes():
    px = np.zeros((10, 10), bool)
    px[9, 9] = True
    cells = pipeline.cells_with_data(px, 3)
    assert cells.sum() == 1 and cells[2, 2]


def test_cancel_leaves_no_file(tmp_path):
    layout = _layout(4, 4)
    calls = {"n": 0}

    def canceled():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(ThorCanceled):
        pipeline.write_grid(layout, _tiles(layout), CountingModel(), "mean", str(tmp_path / "g.tif"),
                            is_canceled=canceled)
    assert os.listdir(tmp_path) == []


def test_file_does_not_grow_when_gdal_cache_is_small(tmp_path):
    """Written as strips one row of tiles tall and flushed per row: a small GDAL cache gives the same
    file as a large one (compressed tiles written in pieces would be rewritten and the file would grow)."""
    layout = _layout(8, 6)
    old = gdal.GetCacheMax()
    sizes = []
    try:
        for cache_mb in (512, 4):
            gdal.SetCacheMax(cache_mb * 1024 * 1024)
            path = str(tmp_path / f"g{cache_mb}.tif")
            pipeline.write_grid(layout, _tiles(layout, lambda t: (t.index * 37) % 11 + 1),
                                CountingModel(channels=64), "mean", path)
            sizes.append(os.path.getsize(path))
    finally:
        gdal.SetCacheMax(old)
    assert sizes[0] == sizes[1]
    ds = gdal.Open(str(tmp_path / "g4.tif"))
    assert ds.GetRasterBand(1).GetBlockSize() == [8 * 18, 18]
    assert ds.GetMetadataItem(gdal_io.CONFIG_KEY)


class BlockMeanModel(CountingModel):
    """A context-free stand-in: each token is the mean of its pixels (band 0), so any correct tiling,
    overlapping or not, must give the same raster."""

    def grid(self, x, group_merge="mean"):
        b, _, h, w = x.shape
        n = self.side
        cells = x[:, 0].reshape(b, n, h // n, n, w // n).mean(axis=(2, 4))
        return np.repeat(cells[:, None], self.channels, axis=1).astype(np.float32)


def _imagery(layout):
    """Imagery as a function of map coordinates, for each tile's bounds (margin included)."""
    for t in layout.tiles():
        x0, _, _, y1 = t.bounds
        cols = x0 + (np.arange(288) + 0.5) * 10.0
        rows = y1 - (np.arange(288) + 0.5) * 10.0
        band = 1000.0 + 0.01 * cols[None, :] + 0.02 * rows[:, None] - 0.0
        yield t, np.repeat(band[None].astype(np.float32), 10, axis=0)


@pytest.mark.parametrize("margin", [1, 3, 8])
def test_overlapping_tiles_place_every_token_where_it_belongs(tmp_path, margin):
    area = (500000.0, 4000000.0, 500000.0 + 7000.0, 4000000.0 + 5000.0)
    plain = tiling.layout_for_area(area, "EPSG:32632", 10, 288, 18)
    over = tiling.layout_for_area(area, "EPSG:32632", 10, 288, 18, margin=margin)
    assert over.core == 18 - 2 * margin and over.output_pixel_size() == 160.0
    assert over.output_geotransform() == plain.output_geotransform()
    a = pipeline.write_grid(plain, _imagery(plain), BlockMeanModel(channels=1), "mean", str(tmp_path / "a.tif"))
    b = pipeline.write_grid(over, _imagery(over), BlockMeanModel(channels=1), "mean", str(tmp_path / "b.tif"))
    ga, gb = gdal.Open(a.path).ReadAsArray(), gdal.Open(b.path).ReadAsArray()
    h, w = min(ga.shape[0], gb.shape[0]), min(ga.shape[1], gb.shape[1])
    assert h * 160 >= 5000 and w * 160 >= 7000  # both cover the area
    np.testing.assert_allclose(gb[:h, :w], ga[:h, :w], rtol=0, atol=1e-3)
    assert b.metadata["grid"]["context_margin_tokens"] == margin


def test_context_margin_must_leave_a_centre():
    with pytest.raises(Exception, match="context margin"):
        tiling.layout_for_area((0, 0, 1000, 1000), "EPSG:32632", 10, 288, 18, margin=9)


def test_rows_larger_than_gdal_cache_do_not_grow_the_file(tmp_path):
    """Rows are written as whole strips once: even a row far larger than GDAL's cache gives the file a
    large cache gives."""
    layout = _layout(16, 3)  # a row: 128 channels x 18 x 288 px x 4 B = 2.65 MB
    old = gdal.GetCacheMax()
    sizes = []
    try:
        for cache_mb in (512, 1):
            gdal.SetCacheMax(cache_mb * 1024 * 1024)
            path = str(tmp_path / f"r{cache_mb}.tif")
            pipeline.write_grid(layout, _tiles(layout, lambda t: (t.index * 7) % 5 + 1),
                                CountingModel(channels=128), "mean", path)
            sizes.append(os.path.getsize(path))
    finally:
        gdal.SetCacheMax(old)
    assert sizes[0] == sizes[1]


def test_context_margin_keeps_tiles_on_the_pixel_grid():
    # 288 px, 54 tokens (scale 30 m): one token is 5.33 px, so a margin of 1 would shift tiles off the grid
    with pytest.raises(Exception, match="off the pixel grid: use a multiple of 3"):
        tiling.layout_for_area((0, 0, 10000, 10000), "EPSG:32632", 30, 288, 54, margin=1)
    assert tiling.layout_for_area((0, 0, 10000, 10000), "EPSG:32632", 30, 288, 54, margin=3).margin == 3
