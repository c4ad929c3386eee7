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
    """Load (or reuse) the model, reporting the resolved configuration. Each warning (random weights,
    unused checkpoint keys) is shown once, as a warning."""
    from ..thor_qgis.embedder import Embedder

    what = {"hub": "reading the official weights (downloaded once, then from the local cache)",
            "checkpoint": "reading the local checkpoint", "random": "with random weights"}.get(model.weights, "")
    feedback.setProgressText(f"Loading the THOR model {model.model_key}: {what} …" if what else
                             f"Loading the THOR model {model.model_key} …")
    feedback.pushInfo(f"Loading {model.model_key} ({_weights_words(model)}, backend {model.backend}, "
                      f"device {model.device}) …")
    shown = set()

    def log(line: str) -> None:
        if line.startswith("WARNING: "):
            text = line[len("WARNING: "):]
            if text not in shown:
                shown.add(text)
                feedback.reportError(text, fatalError=False)
        else:
            feedback.pushInfo(line)

    embedder = Embedder(model, scale_m=scale_m, log=log)
    md = embedder.metadata
    feedback.pushInfo(f"Model ready: {md.get('model_key')} on {md.get('device')} with the {md.get('backend')} "
                      f"backend; weights: {_weights_summary(md.get('weights') or {})}.")
    for warning in md.get("warnings", []):
        if warning not in shown:
            shown.add(warning)
            feedback.reportError(warning, fatalError=False)
    return embedder


def _weights_words(model: specs.ModelSpec) -> str:
    return {"hub": "official pretrained weights", "checkpoint": "weights from a local checkpoint",
            "random": "RANDOM weights"}.get(model.weights, f"{model.weights} weights")


def _weights_summary(weights: dict) -> str:
    """The weights record in words, without the warning it may carry (that is shown on its own)."""
    source = weights.get("source")
    if source == "hub":
        rev = weights.get("revision")
        return f"{weights.get('repo')}/{weights.get('file')}" + (f" (revision {rev[:8]})" if rev else "")
    if source == "checkpoint":
        return f"checkpoint {weights.get('path') or weights.get('file') or ''}".strip()
    if source == "random":
        return "random (testing only)"
    return ", ".join(f"{k}={v}" for k, v in weights.items() if k != "warning") or "unknown"


def provenance(model, output, sensor=None, temporal=None, **extra):
    """The record stored with every output: resolved configuration plus what produced it."""
    return specs.resolved_config(model, output, sensor, temporal, plugin_version=plugin_version(),
                                 qgis_version=Qgis.QGIS_VERSION, **extra)
