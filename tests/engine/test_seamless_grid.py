"""The global tile grid, blended seams, honest progress and cancel inside a forward (write_grid)."""
import os

import numpy as np
import pytest
from osgeo import gdal

from thor_qgis import pipeline, plan, sample, tiling
from thor_qgis.embedder import Embedder
from thor_qgis.errors import ThorCanceled
from thor_qgis.progress import TileProgress
from thor_qgis.raster_source import RasterSource
from thor_qgis.specs import ModelSpec

CRS = "EPSG:32632"


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory):
    return sample.write_sample(str(tmp_path_factory.mktemp("s") / "sample.tif"))


@pytest.fixture(scope="module")
def tiny():
    return Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", batch_size=4))


def _run(src, emb, area, path, seams="blend", margin=3):
    layout = src.layout(area, 288, emb.grid_side(), margin=margin, seams=seams)
    res = pipeline.write_grid(layout, src.tiles(layout), emb, "mean", str(path))
    ds = gdal.Open(res.path)
    return ds.ReadAsArray(), ds.GetGeoTransform(), layout


def _common(a, gta, b, gtb):
    """The cells two north-up rasters on one 160 m grid share: (a's part, b's part)."""
    px = gta[1]
    assert gtb[1] == px
    dx, dy = (gtb[0] - gta[0]) / px, (gta[3] - gtb[3]) / px
    assert dx == round(dx) and dy == round(dy), "the two grids are not on one pixel grid"
    dx, dy = int(round(dx)), int(round(dy))
    x0, y0 = max(0, dx), max(0, dy)
    x1, y1 = min(a.shape[2], dx + b.shape[2]), min(a.shape[1], dy + b.shape[1])
    return a[:, y0:y1, x0:x1], b[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]


# --- the global grid ------------------------------------------------------------------------------


def test_tiles_sit_on_multiples_of_the_step_whatever_the_area():
    for seams, margin in (("none", 0), ("crop", 3), ("blend", 3)):
        for area in ((500123.0, 4990017.0, 507001.0, 4996999.0), (501777.7, 4991234.5, 509000.0, 4999000.0)):
            lay = tiling.global_layout(area, CRS, 10.0, 288, 18, seams=seams, margin=margin)
            step = lay.step_m
            for t in lay.tiles():
                x_core = t.bounds[0] + margin * 160.0 if seams != "none" else t.bounds[0]
                assert x_core / step == pytest.approx(round(x_core / step), abs=1e-9)
            gt = lay.output_geotransform()
            assert gt[0] % 160 == 0 and gt[3] % 160 == 0
            # the output covers the area, snapped outwards by less than one pixel
            assert gt[0] <= area[0] < gt[0] + 160 and gt[3] - 160 < area[3] <= gt[3]
            assert gt[0] + 160 * lay.width >= area[2] > gt[0] + 160 * (lay.width - 1)


@pytest.mark.parametrize("seams", ["none", "crop", "blend"])
def test_same_place_same_vector_for_extents_offset_by_a_non_multiple_of_the_tile(sample_path, tiny, tmp_path,
                                                                                 seams):
    src = RasterSource(sample_path)
    a_area = (500300.0, 4995000.0, 503500.0, 4998500.0)
    b_area = (a_area[0] + 1130.0, a_area[1] + 770.0, a_area[2] + 1130.0, a_area[3] + 770.0)  # not 2880 m
    a, gta, _ = _run(src, tiny, a_area, tmp_path / "a.tif", seams)
    b, gtb, _ = _run(src, tiny, b_area, tmp_path / "b.tif", seams)
    pa, pb = _common(a, gta, b, gtb)
    assert pa.shape[1] * pa.shape[2] >= 12 * 15  # most of the two areas overlap
    assert not np.any(pa == pipeline.GRID_NODATA)
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-5)


def test_adjacent_runs_mosaic_to_the_pixel(sample_path, tiny, tmp_path):
    src = RasterSource(sample_path)
    x0, x1, x2 = 500480.0, 502720.0, 505280.0  # x1: on the 160 m grid, not on the 2880 m tiles
    y0, y1 = 4995200.0, 4998720.0
    left, gl, _ = _run(src, tiny, (x0, y0, x1, y1), tmp_path / "l.tif")
    right, gr, _ = _run(src, tiny, (x1, y0, x2, y1), tmp_path / "r.tif")
    whole, gw, _ = _run(src, tiny, (x0, y0, x2, y1), tmp_path / "w.tif")
    # no gap, no overlap: the right run starts exactly where the left one ends, on the same rows
    assert gl[0] + gl[1] * left.shape[2] == gr[0] == x1
    assert gl[3] == gr[3] == gw[3] and left.shape[1] == right.shape[1] == whole.shape[1]
    assert gw[0] == gl[0] and left.shape[2] + right.shape[2] == whole.shape[2]
    np.testing.assert_allclose(np.concatenate([left, right], axis=2), whole, rtol=0, atol=1e-5)
    # a boundary inside a pixel: both runs hold that pixel column, with the same values
    mid = x1 + 70.0
    left2, gl2, _ = _run(src, tiny, (x0, y0, mid, y1), tmp_path / "l2.tif")
    right2, gr2, _ = _run(src, tiny, (mid, y0, x2, y1), tmp_path / "r2.tif")
    assert gl2[0] + gl2[1] * left2.shape[2] == gr2[0] + 160.0
    np.testing.assert_allclose(left2[:, :, -1], right2[:, :, 0], rtol=0, atol=1e-5)


def test_an_off_grid_raster_keeps_tiles_on_its_pixels(tmp_path):
    from tests.helpers import write_raster

    data = np.ones((10, 100, 100), np.float32) * 500
    path = write_raster(tmp_path / "off.tif", data, (350005.0, 10.0, 0.0, 4200005.0, 0.0, -10.0), epsg=32631)
    src = RasterSource(path)
    lay = src.layout(src.area(), 288, 18)
    assert (lay.anchor_x, lay.anchor_y) == (5.0, 5.0)
    for t in lay.tiles():
        assert (t.bounds[0] - 350005.0) % 10 == 0 and (t.bounds[3] - 4200005.0) % 10 == 0


# --- seams -------------------------------------------------------------------------------------------


def test_blending_weights_add_up_to_one_where_tiles_overlap():
    full = tiling.tile_weights(18, 3)
    w = full[9]  # a middle row: the 1-D ramp (1 in the middle)
    np.testing.assert_allclose(full, np.outer(w, w), rtol=1e-6)
    # tile I covers tokens [12 I - 3, 12 I + 15): neighbours overlap on 6 tokens
    np.testing.assert_allclose(w[12:18] + w[0:6], 1.0, atol=1e-6)
    assert w[0] < 0.02 and np.all(w[6:12] == 1.0)


class ContextModel:
    """A stand-in with a ViT's whole-tile context: each token is the mean of its pixels plus a share of the
    mean of the whole tile, so neighbouring tiles disagree at their common edge."""

    batch_size = 4
    metadata = {"model_key": "stand-in", "weights": {"source": "random"}}

    def grid_channels(self, merge):
        return 1

    def grid_side(self):
        return 18

    def grid_info(self, merge):
        return {"group_merge": merge}

    def grid(self, x, group_merge="mean"):
        b, _, h, w = x.shape
        cells = x[:, 0].reshape(b, 18, h // 18, 18, w // 18).mean(axis=(2, 4))
        return (cells + 0.5 * x[:, 0].mean(axis=(1, 2))[:, None, None])[:, None].astype(np.float32)


def _field(layout):
    """A planted smooth field (a gentle ramp and a long wave) as a function of map coordinates."""
    for t in layout.tiles():
        x0, _, _, y1 = t.bounds
        xs = x0 + (np.arange(288) + 0.5) * 10.0
        ys = y1 - (np.arange(288) + 0.5) * 10.0
        band = 1000.0 + 0.05 * xs[None, :] + 300.0 * np.sin(ys[:, None] / 3000.0)
        yield t, np.repeat(band[None].astype(np.float32), 10, axis=0)


def _steps(grid, layout, edges_at):
    """Largest horizontal neighbour difference across the given token columns, and everywhere else."""
    d = np.abs(np.diff(grid[0].astype(np.float64), axis=1))  # d[:, j]: between columns j and j + 1
    cols = layout.out_col0 + np.arange(d.shape[1]) + 1  # global token column right of each difference
    across = np.isin(cols, edges_at)
    return d[:, across].max(), d[:, ~across].max()


def test_blended_output_has_no_step_larger_than_inside_tiles(tmp_path):
    area = (500000.0, 5000000.0, 512000.0, 5004000.0)
    out = {}
    for seams in ("none", "crop", "blend"):
        lay = tiling.global_layout(area, CRS, 10.0, 288, 18, seams=seams, margin=3)
        res = pipeline.write_grid(lay, _field(lay), ContextModel(), "mean", str(tmp_path / f"{seams}.tif"))
        grid = gdal.Open(res.path).ReadAsArray()[None]
        k, e = lay.core, lay.blend_margin
        i = np.arange(lay.col0, lay.col0 + lay.tiles_x + 1)
        edges = np.unique(np.concatenate([i * k - e, i * k + e]))  # where a tile's written part starts or ends
        out[seams] = _steps(grid, lay, edges)
    none_across, none_inside = out["none"]
    crop_across, crop_inside = out["crop"]
    blend_across, blend_inside = out["blend"]
    assert none_across > 5 * none_inside and crop_across > 5 * crop_inside  # the stand-in makes seams
    assert blend_across <= blend_inside  # blended: no step at tile edges larger than inside tiles
    assert max(blend_across, blend_inside) < 0.4 * none_across  # and the largest step is much smaller


# --- progress and cancel ------------------------------------------------------------------------------


class SlowCounter(ContextModel):
    def __init__(self):
        self.embedded = 0

    def grid(self, x, group_merge="mean"):
        self.embedded += x.shape[0]
        return super().grid(x, group_merge)


def test_progress_reaches_one_only_after_the_last_write(tmp_path):
    lay = tiling.global_layout((500000.0, 5000000.0, 509000.0, 5006000.0), CRS, 10.0, 288, 18)
    model = SlowCounter()
    path = tmp_path / "p.tif"
    seen = []

    def progress(f):
        seen.append((f, model.embedded, path.exists()))

    texts = []
    pipeline.write_grid(lay, _field(lay), model, "mean", str(path), progress=progress,
                        progress_text=texts.append)
    n = lay.n_tiles
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(not exists for f, _, exists in seen if f < 1.0)
    assert [exists for f, _, exists in seen if f == 1.0] == [True]  # 1.0: after the file is complete
    # never ahead of the model: written tiles <= embedded tiles
    assert all(f * (2 * n + 1) <= 2 * emb + 1e-9 for f, emb, _ in seen if f < 1.0)
    assert f"tile {n} of {n}" in " ".join(texts) and texts[0].startswith(f"tile 0 of {n}")
    assert any("left" in t for t in texts)


def test_progress_text_says_tiles_and_time_left():
    now = [100.0]
    texts, fractions = [], []
    p = TileProgress(4, fractions.append, texts.append, clock=lambda: now[0])
    p.start()
    now[0] += 10.0
    p.add_embedded(2)
    assert texts[-1] == "tile 2 of 4 · 10 s left"
    now[0] += 10.0
    p.add_embedded(2)
    assert texts[-1] == "tile 4 of 4 · writing" and fractions[-1] == pytest.approx(4 / 9)
    p.set_written(4)
    assert fractions[-1] < 1.0
    p.finished()
    assert fractions[-1] == 1.0


def test_cancel_lands_inside_a_batch(sample_path, tmp_path):
    """A cancel asked while a batch of 8 tiles is in the model stops it within the model's next block:
    less than one tile's work after the request (a batch is 8 tiles × 12 blocks)."""
    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", batch_size=8))
    blocks = emb.torch_modules()[0].blocks
    state = {"started": 0, "cancel": False, "completed_after": 0}

    def started(_m, _a):
        state["started"] += 1
        if state["started"] == 3:  # the first batch is in its third block
            state["cancel"] = True

    def completed(_m, _a, _o):
        if state["cancel"]:
            state["completed_after"] += 1

    handles = [b.register_forward_pre_hook(started) for b in blocks]
    handles += [b.register_forward_hook(completed) for b in blocks]
    src = RasterSource(sample_path)
    lay = src.layout(src.area(), 288, 18)
    try:
        with pytest.raises(ThorCanceled):
            pipeline.write_grid(lay, src.tiles(lay), emb, "mean", str(tmp_path / "c.tif"),
                                is_canceled=lambda: state["cancel"])
    finally:
        for h in handles:
            h.remove()
    assert state["completed_after"] == 0  # the third block of the batch never finished
    assert state["started"] == 3
    assert os.listdir(tmp_path) == []
    # the model still works afterwards (the check is inert outside a run)
    assert emb.grid(np.full((1, 10, 288, 288), 500.0, np.float32)).shape == (1, 192, 18, 18)


# --- the plan ---------------------------------------------------------------------------------------------


def test_plan_matches_the_layout_and_estimates_time():
    lay = tiling.global_layout((500000.0, 5000000.0, 600000.0, 5100000.0), CRS, 10.0, 288, 18)
    spec = ModelSpec(model_key="thor_v1_base", weights="random")
    p = plan.grid_plan(lay, spec, plan.grid_channels(spec, "concat"), device="cpu", earth_engine=True)
    assert p.tiles == lay.n_tiles == p.ee_requests and (p.width, p.height) == (625, 625)
    assert p.channels == 1536 and p.output_bytes == 625 * 625 * 1536 * 4
    assert p.estimated_seconds == pytest.approx(0.78 * lay.n_tiles)
    text = "\n".join(p.lines())
    assert f"{lay.n_tiles:,} tile(s)" in text and "Earth Engine request" in text and "GB" in text
    gpu = plan.grid_plan(lay, spec, 768, device="cuda")
    assert gpu.estimated_seconds is None and "no stored time" in "\n".join(gpu.lines())
