"""Parameters through real QGIS: a run's checks open its input raster once however often Processing asks
(the dialog, the run, our own second call), and a file changed between checks is checked again; the offset
parameter not set (the raster metadata's offset) differs from an explicit 0 (no offset)."""
import json
import os

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildParameterSource, QgsProcessingModelOutput, QgsProcessingModelParameter,
                       QgsProcessingParameterRasterLayer)

from tests.conftest import run_qgis_process
from tests.helpers import model_output_parameter, write_raster
from tests.qgis.feedback import LogFeedback
from tests.qgis.test_toolbox_and_modeler import child

RANDOM_TINY = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False}
GT = (600000.0, 10.0, 0.0, 5100000.0, 0.0, -10.0)


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


@pytest.fixture
def small_raster(tmp_path):
    """A 10-band, 64 x 64 px raster at 10 m (values 100..1100), one tile."""
    rng = np.random.default_rng(0)
    arr = (rng.random((10, 64, 64)) * 1000 + 100).astype(np.float32)
    return write_raster(tmp_path / "in.tif", arr, GT, epsg=32633)


class Opens:
    """Counts the GDAL opens of one file through the Python bindings (all the plugin's reading goes there)."""

    def __init__(self, monkeypatch, path):
        self.path = os.path.realpath(path)
        self.count = 0
        for name in ("Open", "OpenEx", "OpenShared"):
            monkeypatch.setattr(gdal, name, self._counting(getattr(gdal, name)))

    def _counting(self, opener):
        def counted(path, *args, **kwargs):
            if isinstance(path, str) and os.path.exists(path) and os.path.realpath(path) == self.path:
                self.count += 1
            return opener(path, *args, **kwargs)
        return counted


def _check(params):
    alg = QgsApplication.processingRegistry().createAlgorithmById("thor:grid_from_raster")
    return alg.checkParameterValues(params, QgsProcessingContext())


def test_repeated_checks_open_the_raster_once(plugin, small_raster, tmp_path, monkeypatch):
    opens = Opens(monkeypatch, small_raster)
    params = {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")}
    assert _check(params) == (True, "")  # the dialog's check
    assert _check(params) == (True, "")  # the run's
    assert opens.count == 1


def test_a_run_opens_its_input_three_times(plugin, small_raster, tmp_path, monkeypatch):
    """One check (it was two: our checks call check_values twice), the kind of raster (a plugin output is
    refused), and the reading itself."""
    opens = Opens(monkeypatch, small_raster)
    run("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")})
    assert opens.count == 3


def test_a_file_changed_between_checks_is_checked_again(plugin, small_raster, tmp_path, monkeypatch):
    params = {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")}
    opens = Opens(monkeypatch, small_raster)
    assert _check(params)[0]
    good = open(small_raster, "rb").read()
    garbage = b"not a raster " * (len(good) // 13) + b"x" * (len(good) % 13)  # same size, not a raster
    with open(small_raster, "r+b") as f:  # rewritten in place: same inode, same size
        f.write(garbage)
    ok, msg = _check(params)
    assert not ok and "not a raster GDAL can read" in msg and opens.count >= 2
    replacement = tmp_path / "new.tif"
    replacement.write_bytes(good)
    os.replace(replacement, small_raster)  # replaced: another inode
    before = opens.count
    assert _check(params)[0] and opens.count == before + 1
    assert _check(params)[0] and opens.count == before + 1  # unchanged again: not reopened


# --- DN_OFFSET: not set (the metadata's offset, else none) differs from an explicit 0 ------------------------

def _grid(path):
    arr = gdal.Open(str(path)).ReadAsArray()
    record = json.loads(gdal.Open(str(path)).GetMetadataItem("THOR_CONFIG"))
    return arr, record["source"]["dn_offset"]


@pytest.fixture
def offset_rasters(small_raster, tmp_path):
    """(plain, the same + 1000 with BOA_ADD_OFFSET=-1000 in its metadata, the same + 1000 without)."""
    arr = gdal.Open(small_raster).ReadAsArray()
    stated = write_raster(tmp_path / "stated.tif", arr + 1000, GT, epsg=32633)
    ds = gdal.Open(stated, gdal.GA_Update)
    ds.SetMetadataItem("BOA_ADD_OFFSET", "-1000")
    ds = None
    raw = write_raster(tmp_path / "raw.tif", arr + 1000, GT, epsg=32633)
    return small_raster, stated, raw


def test_an_explicit_offset_of_0_wins_over_the_metadata(plugin, offset_rasters, tmp_path):
    plain, stated, raw = offset_rasters
    out = {}
    for key, src, extra in (("default", stated, {}), ("zero", stated, {"DN_OFFSET": 0}),
                            ("minus1000", stated, {"DN_OFFSET": -1000.0}),  # as saved scripts and models pass it
                            ("plain", plain, {}), ("raw", raw, {"DN_OFFSET": None})):  # None: the dialog's "Not set"
        fb = LogFeedback()
        run("grid_from_raster", {"INPUT": src, **RANDOM_TINY, **extra, "OUTPUT": str(tmp_path / f"grid_{key}.tif")}, fb)
        out[key] = _grid(tmp_path / f"grid_{key}.tif") + (fb.text,)
    assert out["default"][1] == -1000 and "-1000 stated in the raster's metadata" in out["default"][2]
    np.testing.assert_allclose(out["default"][0], out["plain"][0], atol=1e-4)
    np.testing.assert_allclose(out["minus1000"][0], out["plain"][0], atol=1e-4)
    assert out["zero"][1] == 0 and "it is not applied" in out["zero"][2]
    assert "DN_OFFSET=-1000" not in out["zero"][2]  # the metadata states an offset: no guess about values above 1000
    np.testing.assert_allclose(out["zero"][0], out["raw"][0], atol=1e-4)
    assert np.abs(out["zero"][0] - out["default"][0]).max() > 1e-2
    assert out["raw"][1] == 0 and "DN_OFFSET=-1000" in out["raw"][2]  # no metadata: the warning


def test_the_offset_parameter_is_optional_with_no_default(plugin):
    alg = QgsApplication.processingRegistry().algorithmById("thor:grid_from_raster")
    d = alg.parameterDefinition("DN_OFFSET")
    assert d.defaultValue() is None and d.checkValueIsAcceptable(None)  # optional: None is accepted


def _offset_model(offset):
    """A model with one grid_from_raster child, every parameter set as the modeler dialog sets it (its
    default: DN_OFFSET's is None), DN_OFFSET to ``offset`` when given."""
    model = QgsProcessingModelAlgorithm("offset", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("s2", "Sentinel-2"), QgsProcessingModelParameter("s2"))
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    c = child("thor:grid_from_raster", "grid", {
        "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("s2"), "MODEL_KEY": static("thor_v1_tiny"),
        "PRETRAINED": static(False), **({"DN_OFFSET": static(offset)} if offset is not None else {})})
    o = QgsProcessingModelOutput("grid_out", "grid")
    o.setChildOutputName("OUTPUT")
    c.setModelOutputs({"grid_out": o})
    model.addChildAlgorithm(c)
    return model


@pytest.mark.slow
def test_in_a_model_and_in_qgis_process_0_is_0_and_not_set_is_the_metadata(plugin, offset_rasters, tmp_path):
    import processing

    _, stated, _ = offset_rasters
    for offset, expected in ((None, -1000), (0.0, 0)):
        model = _offset_model(offset)
        out = str(tmp_path / f"model_{offset}.tif")
        processing.run(model, {"s2": stated, model_output_parameter(model, "grid", "grid_out"): out})
        assert _grid(out)[1] == expected, offset
    out = tmp_path / "qgis_process.tif"  # (not set there is the same code path as processing.run's)
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"INPUT={stated}", "MODEL_KEY=thor_v1_tiny",
                         "PRETRAINED=false", "DN_OFFSET=0", f"OUTPUT={out}")
    assert r.returncode == 0, r.stderr
    assert _grid(out)[1] == 0


def test_an_offset_that_is_no_number_is_refused(plugin, offset_rasters, tmp_path):
    """Text that is no number was read as 0, which now has a meaning of its own (wins over the metadata)."""
    import processing

    _, stated, _ = offset_rasters
    out = tmp_path / "grid_text.tif"
    with pytest.raises(QgsProcessingException, match="DN_OFFSET: 'abc' is not a number"):
        processing.run("thor:grid_from_raster", {"INPUT": stated, "MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False,
                                                 "DN_OFFSET": "abc", "OUTPUT": str(out)})
    assert not out.exists()
