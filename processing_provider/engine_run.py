"""Opening the model and recording provenance: what every model-running algorithm does the same way."""
from qgis.core import Qgis

from . import params as P
from .provider import plugin_version
from ..thor_qgis import specs


def resolve_common(alg, parameters, context, grid: bool = True, earth_engine: bool = False):
    """(ModelSpec, OutputSpec, SensorSpec) from the parameters, or a QgsProcessingException."""
    model = P.model_spec(alg, parameters, context)
    output = (P.grid_output_spec if grid else P.pooled_output_spec)(alg, parameters, context)
    sensor = P.sensor_spec(alg, parameters, context, earth_engine=earth_engine)
    return model, output, sensor


def open_embedder(model: specs.ModelSpec, scale_m: float, feedback):
    """Load (or reuse) the model, reporting the resolved configuration."""
    from ..thor_qgis.embedder import Embedder

    feedback.pushInfo(f"Loading {model.model_key} ({model.weights} weights, backend {model.backend}, "
                      f"device {model.device}) …")
    embedder = Embedder(model, scale_m=scale_m, log=feedback.pushInfo)
    md = embedder.metadata
    feedback.pushInfo(f"Model ready: {md.get('model_key')} on {md.get('device')} with the {md.get('backend')} "
                      f"backend; weights {md.get('weights')}.")
    for warning in md.get("warnings", []):
        feedback.reportError(warning, fatalError=False)
    return embedder


def provenance(model, output, sensor=None, temporal=None, **extra):
    """The record stored with every output: resolved configuration plus what produced it."""
    return specs.resolved_config(model, output, sensor, temporal, plugin_version=plugin_version(),
                                 qgis_version=Qgis.QGIS_VERSION, **extra)
