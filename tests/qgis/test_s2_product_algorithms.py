"""The raster algorithms on Sentinel-2 products (zip, .SAFE folder, a layer dropped on the map) against the
same pixels given as a stacked GeoTIFF with the offset typed by hand."""
import json

import numpy as np
import pytest
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tests.conftest import run_qgis_process
from tests.helpers import read_raster, write_raster
from tests.qgis.feedback import LogFeedback
from tests.s2_safe import make_product

# a tiny model with random weights (seed 0, the same in every run of this process), 96 px tiles: the
# 240 px product makes 3 x 3 tiles, the last row and column partly outside the product
MODEL = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False, "IMAGE_SIZE": 96}  # 6 x 6 tokens: the default margin shrinks to fit
THOR_ORDER = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


def stack_of(product, path):
    """The product's pixels as one 10-band GeoTIFF at 10 m (20 m bands as 2 x 2 blocks), DN as stored."""
    bands = []
    for b in THOR_ORDER:
        px = product["pixels"][b]
        bands.append(np.repeat(np.repeat(px, 2, 0), 2, 1) if px.shape[0] * 2 == product["pixels"]["B02"].shape[0]
                     else px)
    return write_raster(path, np.stack(bands).astype(np.float32), (600000.0, 10.0, 0.0, 5000040.0, 0.0, -10.0),
                        epsg=32632)


@pytest.fixture(scope="module")
def n0400(tmp_path_factory):
    d = tmp_path_factory.mktemp("n0400")
    p = make_product(d, baseline="04.00", zipped=True)
    p["stack"] = stack_of(p, d / "stack.tif")
    return p


@pytest.fixture(scope="module")
def n0209(tmp_path_factory):
    d = tmp_path_factory.mktemp("n0209")
    p = make_product(d, baseline="02.09", seed=7)
    p["stack"] = stack_of(p, d / "stack.tif")
    return p


@pytest.fixture(scope="module")
def grid_of_stack_with_manual_offset(plugin, n0400, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "stack_grid.tif")
    run("grid_from_raster", {"INPUT": n0400["stack"], "DN_OFFSET": -1000.0, **MODEL, "OUTPUT": out})
    return read_raster(out)[0]


def test_grid_on_the_zip_equals_the_stack_with_manual_offset(plugin, n0400, grid_of_stack_with_manual_offset,
                                                             tmp_path):
    log = LogFeedback()
    out = str(tmp_path / "zip_grid.tif")
    run("grid_from_raster", {"S2_PRODUCT": n0400["zip"], **MODEL, "OUTPUT": out}, feedback=log)
    arr, gt, _, ds = read_raster(out)
    # the product's extent on the global 160 m token grid, snapped outwards (its top edge, 5000040, is not on it)
    _, sgt, _, sds = read_raster(n0400["stack"])
    xmin, ymax = sgt[0], sgt[3]
    xmax, ymin = xmin + sgt[1] * sds.RasterXSize, ymax + sgt[5] * sds.RasterYSize
    cols = int(np.ceil(xmax / 160 - 1e-9) - np.floor(xmin / 160 + 1e-9))
    rows = int(np.ceil(ymax / 160 - 1e-9) - np.floor(ymin / 160 + 1e-9))
    assert arr.shape == (192, rows, cols)
    assert gt == (np.floor(xmin / 160) * 160, 160.0, 0.0, np.ceil(ymax / 160) * 160, 0.0, -160.0)
    np.testing.assert_array_equal(arr, grid_of_stack_with_manual_offset)
    cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))["source"]
    assert cfg["kind"] == "sentinel2_product" and cfg["path"] == n0400["zip"]
    assert cfg["product_id"] == n0400["uri"] and cfg["processing_baseline"] == "04.00"
    assert cfg["sensing_time"] == "2024-07-14T10:20:31.024Z" and cfg["level"] == "L2A"
    assert cfg["offsets"] == {b: -1000.0 for b in ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")}
    assert cfg["quantification_value"] == 10000.0
    assert "BOA_ADD_OFFSET, metadata): -1000 for every band" in log.text
    assert n0400["uri"] in log.text and "nearest neighbour" in log.text


def test_forgetting_the_offset_changes_the_embeddings(plugin, n0400, grid_of_stack_with_manual_offset, tmp_path):
    """The control: without the offset the same pixels give other embeddings, so equality above means
    the product's offset was applied."""
    out = str(tmp_path / "no_offset.tif")
    run("grid_from_raster", {"INPUT": n0400["stack"], **MODEL, "OUTPUT": out})
    diff = np.abs(read_raster(out)[0] - grid_of_stack_with_manual_offset).max()
    assert diff > 0.01


def test_grid_on_the_safe_folder_of_baseline_02_09(plugin, n0209, tmp_path):
    a, b = str(tmp_path / "safe.tif"), str(tmp_path / "stack.tif")
    log = LogFeedback()
    run("grid_from_raster", {"S2_PRODUCT": n0209["safe"], **MODEL, "OUTPUT": a}, feedback=log)
    run("grid_from_raster", {"INPUT": n0209["stack"], **MODEL, "OUTPUT": b})
    np.testing.assert_array_equal(read_raster(a)[0], read_raster(b)[0])
    assert "before 04.00" in log.text
    cfg = json.loads(read_raster(a)[3].GetMetadataItem("THOR_CONFIG"))["source"]
    assert cfg["processing_baseline"] == "02.09" and set(cfg["offsets"].values()) == {0.0}


def offered_layers(path):
    """The layers QGIS offers when ``path`` is dropped on the map (its sublayer query), loaded."""
    registry = QgsProviderRegistry.instance()
    if hasattr(registry, "querySublayers"):  # QGIS >= 3.22
        uris = [s.uri() for s in registry.querySublayers(path)]
    else:
        from osgeo import gdal
        uris = [name for name, _ in gdal.Open(path).GetSubDatasets()]
    return {u: QgsRasterLayer(u, "dropped", "gdal") for u in uris}


@pytest.mark.parametrize("dropped", ["metadata file", "zip"])
def test_product_dropped_on_the_map(plugin, n0400, grid_of_stack_with_manual_offset, tmp_path, dropped):
    """Dropping the metadata file offers GDAL's SENTINEL2 subdatasets. Dropping the zip offers them too in
    QGIS 3.40; QGIS 3.22 offers the files inside the zip instead (its subdataset entries do not load). A layer
    of either, at any resolution, stands for the whole product."""
    layers = offered_layers(n0400["mtd"] if dropped == "metadata file" else n0400["zip"])
    picked = [u for u in layers if u.startswith("SENTINEL2_L2A:") and ":20m:" in u and layers[u].isValid()]
    if not picked and dropped == "zip":
        picked = [u for u in layers if u.endswith("_B04_10m.jp2") and layers[u].isValid()]
    assert picked, list(layers)
    layer = layers[picked[0]]
    assert layer.isValid()
    log = LogFeedback()
    out = str(tmp_path / "dropped.tif")
    run("grid_from_raster", {"INPUT": layer, "BAND_MAP": "1,2,3,4,5,6,7,8,9,10", "DN_OFFSET": -1000.0, **MODEL,
                             "OUTPUT": out}, feedback=log)
    np.testing.assert_array_equal(read_raster(out)[0], grid_of_stack_with_manual_offset)
    assert "part of a Sentinel-2 product" in log.text
    assert "band mapping parameter is not used" in log.text
    assert "offset parameter (-1000) matches the product's metadata; it is applied once" in log.text


def test_pooled_on_the_product_equals_the_stack(plugin, n0400, tmp_path):
    pts = QgsVectorLayer("Point?crs=EPSG:32632&field=name:string", "pts", "memory")
    f = QgsFeature(pts.fields())
    f.setAttributes(["a"])
    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(601200.0, 4998840.0)))
    pts.dataProvider().addFeatures([f])
    vecs = []
    for key, value, extra in (("S2_PRODUCT", n0400["safe"], {}), ("INPUT", n0400["stack"], {"DN_OFFSET": -1000.0})):
        out = str(tmp_path / f"pooled_{key}.gpkg")
        res = run("pooled_from_raster", {"FEATURES": pts, key: value, **extra, **MODEL, "OUTPUT": out})
        row = next(QgsVectorLayer(res["OUTPUT"], "p", "ogr").getFeatures())
        assert row["thor_status"] == "ok"
        vecs.append(np.array([row[f"thor_{i:03d}"] for i in range(192)]))
    np.testing.assert_array_equal(vecs[0], vecs[1])


def test_l1c_runs_with_a_warning(plugin, tmp_path):
    p = make_product(tmp_path, level="L1C", size10=96, zipped=True)
    log = LogFeedback()
    run("grid_from_raster", {"S2_PRODUCT": p["zip"], **MODEL, "OUTPUT": str(tmp_path / "l1c.tif")}, feedback=log)
    assert "pretrained on Level-2A surface reflectance" in log.text
    assert "RADIO_ADD_OFFSET, metadata): -1000" in log.text


def test_incomplete_product_fails_naming_the_missing_band(plugin, tmp_path):
    p = make_product(tmp_path, size10=96, omit_files=("B8A",), zipped=True)
    out = tmp_path / "never.tif"
    with pytest.raises(QgsProcessingException, match=r"incomplete.*B8A \(GRANULE/.*_B8A_20m\.jp2\)"):
        run("grid_from_raster", {"S2_PRODUCT": p["zip"], **MODEL, "OUTPUT": str(out)})
    assert not out.exists()


def test_no_imagery_at_all_is_a_clear_error(plugin, tmp_path):
    with pytest.raises(QgsProcessingException, match="Give the imagery"):
        run("grid_from_raster", {**MODEL, "OUTPUT": str(tmp_path / "x.tif")})


def test_model_with_a_product_file_input(plugin, n0400, grid_of_stack_with_manual_offset, tmp_path):
    import processing

    from tests.qgis.test_toolbox_and_modeler import child

    model = QgsProcessingModelAlgorithm("product chain", "tests")
    model.addModelParameter(QgsProcessingParameterFile("product", "Sentinel-2 product"),
                            QgsProcessingModelParameter("product"))
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    grid = child("thor:grid_from_raster", "grid", {
        "S2_PRODUCT": QgsProcessingModelChildParameterSource.fromModelParameter("product"),
        **{k: static(v) for k, v in MODEL.items()}})
    from qgis.core import QgsProcessingModelOutput

    o = QgsProcessingModelOutput("grid_out", "grid")
    o.setChildOutputName("OUTPUT")
    grid.setModelOutputs({"grid_out": o})
    model.addChildAlgorithm(grid)
    out = str(tmp_path / "model_grid.tif")
    dest = [d.name() for d in model.destinationParameterDefinitions()]  # "grid:grid_out" (3.22) or as 3.40 names it
    assert len(dest) == 1, dest
    processing.run(model, {"product": n0400["zip"], dest[0]: out})
    np.testing.assert_array_equal(read_raster(out)[0], grid_of_stack_with_manual_offset)


def test_qgis_process_on_the_safe_folder(plugin, n0400, grid_of_stack_with_manual_offset, tmp_path):
    out = tmp_path / "cli.tif"
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"S2_PRODUCT={n0400['safe']}",
                         "MODEL_KEY=thor_v1_tiny", "PRETRAINED=false", "IMAGE_SIZE=96", f"OUTPUT={out}")
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["results"]["TILES"] >= 9
    np.testing.assert_allclose(read_raster(out)[0], grid_of_stack_with_manual_offset, atol=1e-5, rtol=0)


def test_product_typed_into_the_raster_layer_parameter_says_where_it_goes(plugin, n0400, tmp_path):
    with pytest.raises(QgsProcessingException, match="is a Sentinel-2 product, not a raster layer: give it as "
                                                     "S2_PRODUCT"):
        run("grid_from_raster", {"INPUT": n0400["zip"], **MODEL, "OUTPUT": str(tmp_path / "x.tif")})
