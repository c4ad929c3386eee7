"""DASK_SCHEDULER on the grid algorithms: through Processing and through qgis_process (QGIS's own Python
starting the local workers)."""
import json

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException

from tests.conftest import run_qgis_process
from tests.fake_ee import ee_env  # noqa: F401

# two tiles of the sample, side by side: light
PARAMS = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": "false", "SEAMS": "none",
          "EXTENT": "500000,502000,4997000,4999000 [EPSG:32632]"}


def run(params):
    import processing

    return processing.run("thor:grid_from_raster", params)


def read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), ds.GetGeoTransform(), json.loads(ds.GetMetadataItem("THOR_CONFIG"))


def test_the_option_is_advanced_and_listed(plugin):
    from qgis.core import QgsApplication

    from thor_embeddings.processing_provider.compat import PARAMETER_ADVANCED

    for alg in ("thor:grid_from_raster", "thor:ee_grid"):
        d = QgsApplication.processingRegistry().algorithmById(alg).parameterDefinition("DASK_SCHEDULER")
        assert d is not None and d.flags() & PARAMETER_ADVANCED
        assert d.description() == "Dask scheduler" and "local:N" in d.help() and "tcp://host:8786" in d.help()


def test_a_bad_scheduler_is_refused_and_nothing_is_written(plugin, sample_raster, tmp_path):
    out = tmp_path / "bad.tif"
    with pytest.raises(QgsProcessingException, match="local:N takes a number of worker processes"):
        run(dict(PARAMS, INPUT=str(sample_raster), DASK_SCHEDULER="local:many", OUTPUT=str(out)))
    assert not out.exists()


def test_qgis_process_local2_matches_in_process(plugin, sample_raster, tmp_path):
    a = tmp_path / "a.tif"
    run(dict(PARAMS, INPUT=str(sample_raster), OUTPUT=str(a)))
    b = tmp_path / "b.tif"
    args = [f"{k}={v}" for k, v in PARAMS.items()]
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"INPUT={sample_raster}", *args,
                         "DASK_SCHEDULER=local:2", f"OUTPUT={b}")
    assert r.returncode == 0, r.stderr[-3000:]
    log = " ".join(json.loads(r.stdout)["log"]["info"])
    assert "local Dask cluster of 2 worker" in log and "Model ready on the workers" in log
    (xa, gta, ca), (xb, gtb, cb) = read(a), read(b)
    assert gta == gtb and xa.shape == xb.shape == (192, 13, 13)
    assert ca == cb  # the same record: configuration, weights, source, grid
    # QGIS's process computes float32 a hair differently from a plain Python (the workers): within 1e-5
    np.testing.assert_allclose(xa, xb, rtol=0, atol=1e-5)


def test_ee_grid_on_local2_fetches_on_the_workers_and_matches_in_process(plugin, ee_env, tmp_path, monkeypatch):
    from tests.fake_ee import DEFAULT_PROJECT, FakeEarthEngine

    with FakeEarthEngine() as fake:
        monkeypatch.setenv("THOR_EE_API_URL", fake.url)
        params = {"POINT": "15.01,36.1 [EPSG:4326]", "MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False,
                  "SEAMS": "none", "PROJECT": DEFAULT_PROJECT, "USE_CACHE": False}
        a = run_alg("ee_grid", dict(params, OUTPUT=str(tmp_path / "a.tif")))
        before = fake.count()
        b = run_alg("ee_grid", dict(params, DASK_SCHEDULER="local:2", OUTPUT=str(tmp_path / "b.tif")))
        assert fake.count() - before == b["TILES"] == a["TILES"]  # the workers fetched every tile once
    (xa, gta, ca), (xb, gtb, cb) = read(a["OUTPUT"]), read(b["OUTPUT"])
    assert gta == gtb and xa.shape == xb.shape
    assert ca == cb and cb["source"]["earth_engine"]["auth"] == "anonymous (local emulator)"
    np.testing.assert_allclose(xa, xb, rtol=0, atol=1e-5)


def run_alg(alg, params):
    import processing

    return processing.run(f"thor:{alg}", params)
