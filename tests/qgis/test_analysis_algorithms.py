"""The embedding-analysis algorithms on the sample's THOR grid: toolbox (processing.run), modeler,
qgis_process, renderers, bad inputs, and the README picture rendered by QGIS's map renderer."""
import importlib.util
import json
import os

import numpy as np
import pytest
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tests.conftest import FIXTURE_CKPT, ROOT, need_fixtures, run_qgis_process
from tests.helpers import grid_then_model, read_raster, write_raster


def run(alg, params):
    import processing

    return processing.run(f"thor:{alg}", params)


@pytest.fixture(scope="module")
def sample_grid(plugin, sample_raster, tmp_path_factory):
    need_fixtures()
    out = str(tmp_path_factory.mktemp("grid") / "sample_grid.tif")
    run("grid_from_raster", {"INPUT": str(sample_raster), "MODEL_KEY": "thor_v1_tiny",
                             "CHECKPOINT": str(FIXTURE_CKPT), "OUTPUT": out})
    return out


def _same_grid(a, b):
    _, gta, wkta, dsa = read_raster(a)
    _, gtb, wktb, dsb = read_raster(b)
    assert gta == gtb and wkta == wktb and (dsa.RasterXSize, dsa.RasterYSize) == (dsb.RasterXSize, dsb.RasterYSize)


def test_embedding_to_rgb_on_sample_grid(sample_grid, tmp_path):
    from thor_embeddings.processing_provider.styling import style_rgb_bytes

    out = str(tmp_path / "rgb.tif")
    res = run("embedding_to_rgb", {"INPUT": sample_grid, "OUTPUT": out})
    assert res["OUTPUT"] == out
    arr, _, _, ds = read_raster(out)
    assert arr.shape == (3, 36, 36) and arr.dtype == np.uint8
    assert len(np.unique(arr.reshape(3, -1).T, axis=0)) > 50  # a picture, not a flat colour
    _same_grid(out, sample_grid)
    cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
    assert cfg  # what was done is recorded
    layer = QgsRasterLayer(out, "rgb")
    style_rgb_bytes(layer)
    assert layer.renderer().type() == "multibandcolor"


def test_similarity_with_reference_points_in_another_crs(sample_grid, tmp_path):
    from thor_embeddings.processing_provider.styling import style_similarity

    # a point in the lake of the sample, given in EPSG:4326
    from osgeo import osr

    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.ImportFromEPSG(32632)
    d.ImportFromEPSG(4326)
    for r in (s, d):
        r.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lon, lat = osr.CoordinateTransformation(s, d).TransformPoint(501150.0, 4995600.0)[:2]
    ref = QgsVectorLayer("Point?crs=EPSG:4326", "ref", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(lon, lat)))
    ref.dataProvider().addFeatures([f])
    out = str(tmp_path / "sim.tif")
    run("similarity_map", {"INPUT": sample_grid, "REFERENCE": ref, "OUTPUT": out})
    arr, gt, _, _ = read_raster(out)
    _same_grid(out, sample_grid)
    col, row = int((501150.0 - gt[0]) / gt[1]), int((4995600.0 - gt[3]) / gt[5])
    assert arr[0, row, col] == pytest.approx(1.0, abs=1e-5)
    assert arr.min() >= -1.0 - 1e-6 and arr.max() <= 1.0 + 1e-6
    layer = QgsRasterLayer(out, "sim")
    style_similarity(layer)
    assert layer.renderer().type() == "singlebandpseudocolor"


def test_clusters_and_change_on_sample_grid(sample_grid, tmp_path):
    from thor_embeddings.processing_provider.styling import style_change, style_classes

    out = str(tmp_path / "classes.tif")
    run("kmeans_clusters", {"INPUT": sample_grid, "K": 4, "SEED": 3, "OUTPUT": out})
    arr, *_ = read_raster(out)
    assert set(np.unique(arr)) == {1, 2, 3, 4}
    _same_grid(out, sample_grid)
    layer = QgsRasterLayer(out, "classes")
    style_classes(layer)
    assert layer.renderer().type() == "paletted"
    change = str(tmp_path / "change.tif")
    run("change_map", {"INPUT_A": sample_grid, "INPUT_B": sample_grid, "OUTPUT": change})
    arr, *_ = read_raster(change)
    assert np.abs(arr).max() < 1e-5
    layer = QgsRasterLayer(change, "change")
    style_change(layer)
    assert layer.renderer().type() == "singlebandpseudocolor"


def test_bad_inputs(sample_grid, tmp_path):
    one = write_raster(tmp_path / "one.tif", np.ones((1, 8, 8), np.float32), (0, 1, 0, 8, 0, -1))
    with pytest.raises(QgsProcessingException, match="band"):
        run("embedding_to_rgb", {"INPUT": one, "OUTPUT": str(tmp_path / "x.tif")})
    with pytest.raises(QgsProcessingException, match="k"):
        run("kmeans_clusters", {"INPUT": sample_grid, "K": 1, "OUTPUT": str(tmp_path / "k1.tif")})
    with pytest.raises(QgsProcessingException, match="k"):
        run("kmeans_clusters", {"INPUT": sample_grid, "K": 5000, "OUTPUT": str(tmp_path / "kbig.tif")})
    other = write_raster(tmp_path / "other.tif", np.ones((192, 36, 36), np.float32),
                         (500160.0, 160.0, 0, 5000000.0, 0, -160.0))
    with pytest.raises(QgsProcessingException) as e:
        run("change_map", {"INPUT_A": sample_grid, "INPUT_B": other, "OUTPUT": str(tmp_path / "ch.tif")})
    assert "geotransform" in str(e.value).lower() or "extent" in str(e.value).lower()
    far = QgsVectorLayer("Point?crs=EPSG:32632", "far", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(900000.0, 4000000.0)))
    far.dataProvider().addFeatures([f])
    with pytest.raises(QgsProcessingException, match="overlap") as e:
        run("similarity_map", {"INPUT": sample_grid, "REFERENCE": far, "OUTPUT": str(tmp_path / "s.tif")})
    assert "features id 1 lie outside the raster" in str(e.value)  # named by feature id
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tif") and p not in ("one.tif", "other.tif")]


def test_model_chains_grid_into_embedding_rgb(plugin, sample_raster, tmp_path):
    need_fixtures()
    import processing

    model, name = grid_then_model("embed and look", {"MODEL_KEY": "thor_v1_tiny", "CHECKPOINT": str(FIXTURE_CKPT)},
                                  "thor:embedding_to_rgb", "rgb", "picture")
    dest = str(tmp_path / "picture.tif")
    res = processing.run(model, {"s2": str(sample_raster), name: dest})
    assert res[name] == dest
    arr, *_ = read_raster(dest)
    assert arr.shape == (3, 36, 36)


@pytest.mark.parametrize("alg, extra", [
    ("embedding_to_rgb", {}),
    ("kmeans_clusters", {"K": "3"}),
    ("change_map", None),
])
def test_qgis_process_runs_analysis(sample_grid, tmp_path, alg, extra):
    out = tmp_path / f"{alg}.tif"
    args = [f"INPUT_A={sample_grid}", f"INPUT_B={sample_grid}"] if extra is None else \
        [f"INPUT={sample_grid}"] + [f"{k}={v}" for k, v in extra.items()]
    r = run_qgis_process("--json", "run", f"thor:{alg}", "--", *args, f"OUTPUT={out}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"]["OUTPUT"] == str(out)
    assert out.exists()


def test_readme_picture_renders_and_is_not_blank(plugin, tmp_path):
    spec = importlib.util.spec_from_file_location("render_picture", ROOT / "scripts" / "render_picture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    png = str(tmp_path / "picture.png")
    _, images = mod.make_picture(png, checkpoint=str(FIXTURE_CKPT) if FIXTURE_CKPT.exists() else None,
                                 patch_size=16, work=str(tmp_path))
    assert os.path.getsize(png) > 10000
    for img in images:
        colours = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
        assert len(colours) > 20, "rendered image is blank or flat"
        white = sum(1 for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)
                    if img.pixel(x, y) & 0xFFFFFF == 0xFFFFFF)
        assert white < 0.05 * len(range(0, img.width(), 7)) * len(range(0, img.height(), 7))


def test_output_must_be_a_geotiff_name(sample_grid, tmp_path):
    with pytest.raises(QgsProcessingException, match=r"ending in \.tif"):
        run("embedding_to_rgb", {"INPUT": sample_grid, "OUTPUT": str(tmp_path / "x.img")})
    assert not (tmp_path / "x.img").exists()
