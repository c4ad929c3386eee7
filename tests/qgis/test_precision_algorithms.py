"""The PRECISION parameter through Processing: recorded in THOR_CONFIG and said in the log, bfloat16 close to
float32 on the bundled sample, float16 refused on a CPU before anything runs."""
import json

import numpy as np
import pytest
from qgis.core import QgsProcessingException

from tests.helpers import read_raster
from tests.qgis.feedback import LogFeedback

RANDOM_TINY = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False, "DEVICE": "cpu"}


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


def test_parameter_is_advanced_with_the_choices(plugin):
    from qgis.core import QgsApplication

    from thor_embeddings.processing_provider.compat import PARAMETER_ADVANCED

    alg = QgsApplication.processingRegistry().algorithmById("thor:grid_from_raster")
    p = alg.parameterDefinition("PRECISION")
    assert p.options() == ["float32", "bfloat16", "float16", "auto"]
    assert p.defaultValue() == "float32"
    assert p.flags() & PARAMETER_ADVANCED
    assert "mps" in alg.parameterDefinition("DEVICE").options()


def test_bfloat16_grid_recorded_and_close_to_float32(plugin, sample_raster, tmp_path):
    grids = {}
    for precision in ("float32", "bfloat16"):
        fb = LogFeedback()
        out = tmp_path / f"grid_{precision}.tif"
        run("grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "PRECISION": precision,
                                 "OUTPUT": str(out)}, fb)
        arr, _, _, ds = read_raster(out)
        cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
        assert cfg["model"]["precision"] == precision
        assert cfg["engine"]["precision"] == precision
        assert any(line.startswith(f"THOR precision: {precision}") for line in fb.lines)
        grids[precision] = arr.astype(np.float64)
    a, b = grids["float32"], grids["bfloat16"]
    assert a.shape == b.shape == (192, 36, 36)
    cos = (a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)
    assert cos.min() >= 0.999
    assert not np.array_equal(a, b)


def test_float16_on_cpu_refused_clearly(plugin, sample_raster, tmp_path):
    out = tmp_path / "f16.tif"
    with pytest.raises(QgsProcessingException, match="GPU only"):
        run("grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "PRECISION": "float16",
                                 "OUTPUT": str(out)})
    assert not out.exists()
