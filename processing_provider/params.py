"""Parameter building shared by the THOR algorithms, and their conversion to the engine's specs.

Defaults are the reference adapter's; the ``RS_EMBED_THOR_*`` environment variables may change them
(read when the algorithm is defined, which is cheap: no torch, no network). Explicit values win.
"""
import re
import threading
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDateTime,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .compat import DATETIME_DATE, FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, NUMBER_INTEGER, PARAMETER_ADVANCED
from ..thor_qgis import specs
from ..thor_qgis.errors import ThorConfigError, ThorInputError

MODEL_KEY = "MODEL_KEY"
PRETRAINED = "PRETRAINED"
CHECKPOINT = "CHECKPOINT"
IMAGE_SIZE = "IMAGE_SIZE"
PATCH_SIZE = "PATCH_SIZE"
NORMALIZATION = "NORMALIZATION"
DEVICE = "DEVICE"
BACKEND = "BACKEND"
BATCH_SIZE = "BATCH_SIZE"
PRECISION = "PRECISION"
GROUP_MERGE = "GROUP_MERGE"
POOLING = "POOLING"
SCALE = "SCALE"
FILL_VALUE = "FILL_VALUE"
COLLECTION = "COLLECTION"
CLOUDY_PCT = "CLOUDY_PCT"
COMPOSITE = "COMPOSITE"
START_DATE = "START_DATE"
END_DATE = "END_DATE"
FETCH_WORKERS = "FETCH_WORKERS"
CONTEXT_MARGIN = "CONTEXT_MARGIN"
SEAMS = "SEAMS"

MODEL_KEYS = tuple(specs.MODEL_VARIANTS)


def _advanced(param: QgsProcessingParameterDefinition, help_text: str = "") -> QgsProcessingParameterDefinition:
    param.setFlags(param.flags() | PARAMETER_ADVANCED)
    if help_text:
        _help(param, help_text)
    return param


def _help(param: QgsProcessingParameterDefinition, text: str) -> QgsProcessingParameterDefinition:
    if hasattr(param, "setHelp"):  # QGIS >= 3.16
        param.setHelp(text)
    return param


def _enum(name: str, label: str, options, default: str, optional: bool = False) -> QgsProcessingParameterEnum:
    p = QgsProcessingParameterEnum(name, label, options=list(options), allowMultiple=False,
                                   defaultValue=default, optional=optional)
    p.setUsesStaticStrings(True)
    return p


def _env_model_defaults() -> specs.ModelSpec:
    try:
        spec, _ = specs.model_spec_from_env()
        return spec
    except ThorConfigError:
        # a bad RS_EMBED_THOR_* value must not break loading; it is reported when a run resolves it
        return specs.ModelSpec()


def _default_device(engine_default: str) -> str:
    from .settings import default_device

    d = default_device()
    return d if d in specs.DEVICES else engine_default


def add_model_params(alg, tr) -> None:
    d = _env_model_defaults()
    alg.addParameter(_help(_enum(MODEL_KEY, tr("THOR model"), MODEL_KEYS, d.model_key),
                           tr("thor_v1_tiny (7.6 M parameters, D=192) … thor_v1_large (314 M, D=1024).")))
    alg.addParameter(_help(QgsProcessingParameterBoolean(PRETRAINED, tr("Use the pretrained weights"),
                                                         defaultValue=d.weights != "random"),
                           tr("Off: random weights (for testing only; recorded in the output's metadata).")))
    alg.addParameter(_help(QgsProcessingParameterFile(
        CHECKPOINT, tr("Local checkpoint (.pt)"),
        behavior=FILE_BEHAVIOR_FILE, fileFilter="PyTorch checkpoints (*.pt *.pth *.ckpt *.bin);;All files (*)",
        defaultValue=d.checkpoint, optional=True),
        tr("Instead of downloading the official weights: a THOR checkpoint file in the hub's format (encoder.* "
           "keys, optionally under state_dict) or bare encoder keys, e.g. thor_v1_vit_base.pt downloaded from "
           "huggingface.co/FM4CS on another computer. Use it when this computer cannot reach the Hugging Face "
           "hub.")))
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        IMAGE_SIZE, tr("Image size (pixels per tile side)"), NUMBER_INTEGER,
        defaultValue=d.image_size, minValue=16, maxValue=4096),
        tr("Each tile covers image size × scale metres (2880 m at 288 × 10 m).")))
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        PATCH_SIZE, tr("Patch size"), NUMBER_INTEGER, defaultValue=d.patch_size,
        minValue=1, maxValue=64), tr("16 is THOR's native patch size; other sizes resize the patch "
                                     "kernels (FlexiViT). The token grid has image size / patch size cells.")))
    alg.addParameter(_advanced(_enum(NORMALIZATION, tr("Normalization"), specs.NORMALIZATIONS,
                                     d.normalization),
                               tr("thor_stats (THOR's pretraining): reflectance (value / 10000) standardised per "
                                  "band with the pretraining mean and standard deviation. unit_scale: value / "
                                  "10000, clipped to 0 … 1. none: values passed unchanged (for inputs already "
                                  "normalised).")))
    alg.addParameter(_advanced(_enum(DEVICE, tr("Device"), specs.DEVICES, _default_device(d.device)),
                               tr("auto: a CUDA GPU when PyTorch sees one, else Apple Silicon's MPS, else the "
                                  "CPU. The default comes from the provider's settings.")))
    alg.addParameter(_advanced(_enum(BACKEND, tr("Backend"), specs.BACKENDS, d.backend),
                               tr("builtin: the plugin's own encoder (needs only torch). terratorch: the "
                                  "official TerraTorch THOR backbone, when installed. auto: terratorch "
                                  "when importable, else builtin.")))
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        BATCH_SIZE, tr("Tiles per batch (0: automatic)"), NUMBER_INTEGER, defaultValue=d.batch_size,
        minValue=0, maxValue=256),
        tr("Tiles embedded together in one forward pass. More is faster on a GPU and needs more memory (a "
           "base-model tile at 288 px needs about 0.2 GB); the result does not depend on it. 0: automatic, "
           "4 on a CPU, and on a CUDA GPU as many as fit in half of its free memory (up to 64).")))
    alg.addParameter(_advanced(_enum(PRECISION, tr("Precision"), specs.PRECISIONS, d.precision),
                               tr("float32: exact (the default). bfloat16: about twice as fast on CPUs with "
                                  "AVX512-BF16 or AMX and on recent GPUs; embeddings differ slightly (cosine "
                                  "similarity to float32 above 0.999 per token). float16: GPU only. auto: your "
                                  "opt-in to bfloat16 or float16 where the hardware runs it natively, float32 "
                                  "elsewhere. The precision used is recorded in the output's metadata.")))


def add_grid_output_params(alg, tr) -> None:
    alg.addParameter(_help(_enum(GROUP_MERGE, tr("Group merge"), specs.GROUP_MERGES,
                                 _safe(specs.default_group_merge, "mean")),
                           tr("How the 10 m and 20 m band groups' token grids are combined: mean, sum, or "
                              "concat (twice the channels).")))


def add_context_margin_param(alg, tr) -> None:
    """How tile edges are handled (SEAMS) and the margin of overlapping tiles (CONTEXT_MARGIN)."""
    from ..thor_qgis.tiling import DEFAULT_MARGIN, DEFAULT_SEAMS, SEAM_MODES

    alg.addParameter(_advanced(_enum(SEAMS, tr("Tile edges"), SEAM_MODES, DEFAULT_SEAMS),
                               tr("blend: tiles overlap by twice the margin and each output pixel is the weighted "
                                  "mean of the tiles covering it (weights fall towards tile edges): no hard step "
                                  "anywhere. crop: the same tiles, only their centres kept. none: tiles side by "
                                  "side, each pixel from one tile (fewest tiles, visible steps at tile edges).")))
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        CONTEXT_MARGIN, tr("Margin of overlapping tiles (tokens)"), NUMBER_INTEGER,
        defaultValue=DEFAULT_MARGIN, minValue=0, maxValue=16),
        tr("For blend and crop: tiles overlap by twice this many tokens (3 at n = 18: 960 m), for about "
           "(n / (n − 2m))² times the tiles of none on large areas (2.25 × at m = 3). Blend allows up to n / 4 "
           "(4 at n = 18), crop up to (n − 1) / 2. Ignored for none.")))


def context_margin(alg, parameters, context) -> int:
    return alg.parameterAsInt(parameters, CONTEXT_MARGIN, context)


def fitted_margin(margin: int, grid_side: int, image_size: int, seams_mode: str, feedback=None) -> int:
    """The margin a run uses: the default shrinks to fit a small token grid (and says so); a chosen one is
    used as it is (and checked by the layout)."""
    from ..thor_qgis.tiling import fit_margin

    fitted = fit_margin(margin, grid_side, image_size, seams_mode)
    if fitted != margin and feedback is not None and not getattr(feedback, "_thor_margin_said", False):
        feedback.pushInfo(f"Margin of overlapping tiles: {fitted} token(s) instead of the default {margin}, the "
                          f"most a {grid_side} x {grid_side} token grid allows with '{seams_mode}' tile edges.")
        feedback._thor_margin_said = True
    return fitted


def seams(alg, parameters, context) -> str:
    if alg.parameterDefinition(SEAMS) is None:
        from ..thor_qgis.tiling import DEFAULT_SEAMS

        return DEFAULT_SEAMS
    return _enum_value(alg, parameters, SEAMS, context)


def check_context_margin(alg, parameters, context, model: specs.ModelSpec, scale_m: float) -> None:
    """For ``checkParameterValues``: the margin against the token grid, before the model is loaded."""
    from ..thor_qgis.tiling import check_margin, fit_margin

    n, mode = model.grid_side(scale_m), seams(alg, parameters, context)
    try:
        check_margin(fit_margin(context_margin(alg, parameters, context), n, model.image_size, mode), n,
                     model.image_size, mode)
    except ThorInputError as e:
        raise QgsProcessingException(str(e)) from None


def add_grid_destination(alg, tr, name: str = "OUTPUT") -> None:
    """The grid GeoTIFF and the numbers every grid algorithm returns with it."""
    from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterRasterDestination

    alg.addParameter(QgsProcessingParameterRasterDestination(name, tr("THOR grid")))
    for key, label in (("WIDTH", "Width (pixels)"), ("HEIGHT", "Height (pixels)"),
                       ("BANDS", "Embedding channels"), ("TILES", "Tiles")):
        alg.addOutput(QgsProcessingOutputNumber(key, tr(label)))


def add_pooling_param(alg, tr) -> None:
    alg.addParameter(_help(_enum(POOLING, tr("Pooling"), specs.POOLINGS, "mean"),
                           tr("How the tokens of a feature's square become one vector: mean (the usual "
                              "choice, robust) or max (per channel, keeps the strongest response).")))


def add_scale_fill_params(alg, tr, advanced: bool = True) -> None:
    flag = _advanced if advanced else _help
    alg.addParameter(flag(QgsProcessingParameterNumber(
        SCALE, tr("Pixel size (m)"), NUMBER_DOUBLE, defaultValue=10.0, minValue=0.1),
        tr("THOR reads Sentinel-2 at 10 m.")))
    alg.addParameter(flag(QgsProcessingParameterNumber(
        FILL_VALUE, tr("Fill value"), NUMBER_DOUBLE, defaultValue=0.0),
        tr("Value of pixels with no data (outside the imagery, masked).")))


def add_sensor_params(alg, tr) -> None:
    """The Earth Engine composite's sensor settings, together in the main list (after the dates)."""
    alg.addParameter(_help(QgsProcessingParameterString(
        COLLECTION, tr("Earth Engine collection"), defaultValue=specs.DEFAULT_COLLECTION),
        tr("THOR was pretrained on Sentinel-2 L2A surface reflectance: COPERNICUS/S2_SR_HARMONIZED.")))
    alg.addParameter(_help(QgsProcessingParameterNumber(
        CLOUDY_PCT, tr("Maximum cloudy pixel percentage"), NUMBER_DOUBLE,
        defaultValue=30.0, minValue=0.0, maxValue=100.0),
        tr("Scenes whose CLOUDY_PIXEL_PERCENTAGE is above this are left out of the composite.")))
    alg.addParameter(_help(_enum(COMPOSITE, tr("Composite"), specs.COMPOSITES, "median"),
                           tr("How the scenes of the date range are combined per pixel.")))
    add_scale_fill_params(alg, tr, advanced=False)


def add_temporal_params(alg, tr, start: str = "2024-06-01", end: str = "2024-09-01") -> None:
    from qgis.PyQt.QtCore import QDate, QDateTime, QTime

    for key, label, value in ((START_DATE, tr("Start date"), start), (END_DATE, tr("End date (exclusive)"), end)):
        p = QgsProcessingParameterDateTime(key, label, type=DATETIME_DATE,
                                           defaultValue=QDateTime(QDate.fromString(value, "yyyy-MM-dd"), QTime(0, 0)))
        alg.addParameter(p)


def add_fetch_workers_param(alg, tr) -> None:
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        FETCH_WORKERS, tr("Parallel requests"), NUMBER_INTEGER,
        defaultValue=_safe(specs.default_fetch_workers, 8), minValue=1, maxValue=40),
        tr("Earth Engine requests in flight at once (the service allows 40 per project).")))


def _safe(fn, fallback):
    try:
        return fn()
    except ThorConfigError:
        return fallback


# --- parameters → specs ------------------------------------------------------------------


def _enum_value(alg, parameters, name, context) -> str:
    return alg.parameterAsEnumString(parameters, name, context)


def optional_number(alg, parameters, name, context) -> Optional[float]:
    """An optional number parameter without a default: None when it is not set (absent, None, NULL or empty
    text), else its value, 0 included."""
    raw = parameters.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()) or (
            hasattr(raw, "isNull") and not hasattr(raw, "isActive") and raw.isNull()):
        return None
    if isinstance(raw, str):  # parameterAsDouble would read text that is no number as 0, a value like any other
        try:
            float(raw)
        except ValueError:
            raise QgsProcessingException(f"{name}: '{raw}' is not a number.") from None
    return alg.parameterAsDouble(parameters, name, context)


def model_spec(alg, parameters, context) -> specs.ModelSpec:
    checkpoint = alg.parameterAsFile(parameters, CHECKPOINT, context) or None
    pretrained = alg.parameterAsBool(parameters, PRETRAINED, context)
    if checkpoint:
        weights = "checkpoint"
    else:
        weights = "hub" if pretrained else "random"
    return to_spec(specs.ModelSpec,
                   model_key=_enum_value(alg, parameters, MODEL_KEY, context),
                   weights=weights, checkpoint=checkpoint,
                   image_size=alg.parameterAsInt(parameters, IMAGE_SIZE, context),
                   patch_size=alg.parameterAsInt(parameters, PATCH_SIZE, context),
                   normalization=_enum_value(alg, parameters, NORMALIZATION, context),
                   device=_enum_value(alg, parameters, DEVICE, context),
                   backend=_enum_value(alg, parameters, BACKEND, context),
                   batch_size=alg.parameterAsInt(parameters, BATCH_SIZE, context),
                   precision=_enum_value(alg, parameters, PRECISION, context) or "float32")


def grid_output_spec(alg, parameters, context) -> specs.OutputSpec:
    return to_spec(specs.OutputSpec, kind="grid", group_merge=_enum_value(alg, parameters, GROUP_MERGE, context))


def pooled_output_spec(alg, parameters, context) -> specs.OutputSpec:
    return to_spec(specs.OutputSpec, kind="pooled", pooling=_enum_value(alg, parameters, POOLING, context))


def sensor_spec(alg, parameters, context, earth_engine: bool = True) -> specs.SensorSpec:
    values: Dict[str, Any] = dict(scale_m=alg.parameterAsDouble(parameters, SCALE, context),
                                  fill_value=alg.parameterAsDouble(parameters, FILL_VALUE, context))
    if earth_engine:
        values.update(collection=alg.parameterAsString(parameters, COLLECTION, context),
                      cloudy_pct=alg.parameterAsDouble(parameters, CLOUDY_PCT, context),
                      composite=_enum_value(alg, parameters, COMPOSITE, context))
    return to_spec(specs.SensorSpec, **values)


def temporal_spec(alg, parameters, context) -> specs.TemporalSpec:
    start = alg.parameterAsDateTime(parameters, START_DATE, context)
    end = alg.parameterAsDateTime(parameters, END_DATE, context)
    if not start.isValid() or not end.isValid():
        raise QgsProcessingException("Give a start date and an end date (YYYY-MM-DD).")
    return to_spec(specs.TemporalSpec, start=start.date().toString("yyyy-MM-dd"),
                   end=end.date().toString("yyyy-MM-dd"))


_NUM = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_EXTENT_TEXT = re.compile(rf"^{_NUM},{_NUM},{_NUM},{_NUM}(?:\[[^\]]*\])?\s*$")


def refuse_inverted_extent(raw) -> None:
    """An extent typed as "xmin,xmax,ymin,ymax [CRS]" with xmax <= xmin or ymax <= ymin is an error
    (QGIS would silently swap the values). Anything else (a layer, a rectangle) is left to QGIS."""
    m = _EXTENT_TEXT.match(raw) if isinstance(raw, str) else None
    if m:
        xmin, xmax, ymin, ymax = (float(v) for v in m.groups())
        if not (xmax > xmin and ymax > ymin):
            raise QgsProcessingException(
                f"The extent is empty or inverted (xmin={xmin:g}, xmax={xmax:g}, ymin={ymin:g}, ymax={ymax:g}).")


def to_spec(cls, **values):
    try:
        return cls(**values)
    except ThorConfigError as e:
        raise QgsProcessingException(str(e)) from None


def check_model_values(alg, parameters, context) -> Tuple[bool, Optional[str]]:
    """For ``checkParameterValues``: each value on its own (with what is allowed), the RS_EMBED_THOR_*
    variables, then the cross-field checks of the model spec: the pixel size against the patch size, the
    tokens per tile and memory of the configuration (:mod:`thor_qgis.limits`), and the context margin where
    the algorithm has one; all before anything runs."""
    from ..thor_qgis import limits

    ok, msg = check_values(alg, parameters, context)
    if not ok:
        return ok, msg
    try:
        specs.check_env()
        model = model_spec(alg, parameters, context)
        scale = alg.parameterAsDouble(parameters, SCALE, context) if alg.parameterDefinition(SCALE) else 10.0
        limits.check_model(model, scale)
        if alg.parameterDefinition(CONTEXT_MARGIN) is not None and alg.parameterDefinition(SCALE) is not None:
            check_context_margin(alg, parameters, context, model, scale)
        return True, None
    except ThorConfigError as e:
        return False, str(e)
    except QgsProcessingException as e:
        return False, str(e)


def check_values(alg, parameters, context) -> Tuple[bool, Optional[str]]:
    """Each parameter on its own, saying what is allowed: an enum's options, a number's range, and for a
    raster file what is wrong with it (QGIS would only say that the value is incorrect, or "not found")."""
    from qgis.core import QgsProcessingParameterRasterLayer

    for d in alg.parameterDefinitions():
        name = d.name()
        value = parameters.get(name)
        if isinstance(d, QgsProcessingParameterRasterLayer):
            problem = raster_file_problem(value, context)
            if problem:
                return False, f"{d.description()} ({name}): {problem}"
            continue
        if value is None or d.checkValueIsAcceptable(value, context):
            continue
        if isinstance(d, QgsProcessingParameterEnum):
            options = d.options()
            return False, (f"{d.description()} ({name}): {value!r} is not one of the allowed values: "
                           + ", ".join(options) + (" (or their index, 0 to " + str(len(options) - 1) + ")"
                                                  if not d.usesStaticStrings() else ""))
        if d.type() == "extent":
            return False, (f"{d.description()} ({name}): {value!r} is not an extent: give xmin,xmax,ymin,ymax "
                           "with its CRS in brackets, e.g. '600000,610000,5090000,5100000 [EPSG:32633]', or a "
                           "layer")
        if isinstance(d, QgsProcessingParameterNumber):
            lo, hi = d.minimum(), d.maximum()
            rng = []
            if lo > -1e300:
                rng.append(f"at least {lo:g}")
            if hi < 1e300:
                rng.append(f"at most {hi:g}")
            whole = " a whole number" if d.dataType() == NUMBER_INTEGER else " a number"
            return False, (f"{d.description()} ({name}): {value!r} is not allowed: it must be{whole}"
                           + (f", {' and '.join(rng)}" if rng else "") + ".")
    return True, None


def raster_file_problem(value, context) -> Optional[str]:
    """What is wrong with a raster input given as a file path (None if it is fine, or not a plain path:
    a layer, a layer id, a provider URI are left to QGIS)."""
    import os

    if not isinstance(value, str) or not value.strip():
        return None
    path = value.strip()
    if "|" in path or "://" in path or path.upper().startswith(("NETCDF:", "HDF", "GPKG:", "/VSI")):
        return None
    project = context.project() if context is not None else None
    if project is not None and project.mapLayer(path) is not None:
        return None
    if not os.path.exists(path):
        if os.sep in path or "/" in path or os.path.splitext(path)[1]:
            return f"the file {path} does not exist"
        return None
    if os.path.isdir(path):
        return None  # a folder may be a raster (a SAFE product, an Arc/Info grid): GDAL decides
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"the file {path} cannot be read ({e.strerror or e})"
    if size == 0:
        return f"the file {path} is empty (0 bytes)"
    real = os.path.realpath(path)
    with _INSPECTED_LOCK:
        seen = _INSPECTED.get(real)
    if seen is not None and _identities(seen[0]) == seen[1]:
        return seen[2]
    identity = _identities((real,))
    problem, files = _inspect_raster(path)
    if problem is None:  # a refusal is not kept: the user may mend the file, or add a missing sidecar
        files = tuple(dict.fromkeys((real, *(os.path.realpath(f) for f in files))))
        with _INSPECTED_LOCK:
            _INSPECTED[real] = (files, identity + _identities(files[1:]), problem)
            _INSPECTED.move_to_end(real)
            while len(_INSPECTED) > _INSPECTED_MAX:
                _INSPECTED.popitem(last=False)
    return problem


# Raster files GDAL read without a fault. A run's parameters are checked more than once (our own checks call
# check_values twice; the dialog, a model or qgis_process may check again): an unchanged file is not reopened.
# By the file's real path: (the files GDAL read for it, their identities then, the answer). A file replaced,
# rewritten or touched since (its own or a sidecar's size, mtime, ctime or inode differ) is inspected afresh.
_INSPECTED: "OrderedDict[str, Tuple[Tuple[str, ...], tuple, Optional[str]]]" = OrderedDict()
_INSPECTED_MAX = 32
_INSPECTED_LOCK = threading.Lock()


def _identities(files) -> tuple:
    import os

    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _inspect_raster(path: str) -> Tuple[Optional[str], Tuple[str, ...]]:
    """What GDAL finds wrong with the raster file at ``path`` (it opens the file), or None; and the files
    GDAL read for it (sidecars included)."""
    from ..thor_qgis.gdal_io import gdal

    g = gdal()
    ds = None
    failure = None
    try:
        ds = g.OpenEx(path, g.OF_RASTER | g.OF_READONLY)
    except RuntimeError as e:
        failure = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if ds is None:
        vector = None
        try:
            vector = g.OpenEx(path, g.OF_VECTOR | g.OF_READONLY)
        except RuntimeError:
            pass
        if vector is not None:
            return f"the file {path} is a vector dataset ({vector.GetDriver().ShortName}), not a raster", ()
        detail = f" (GDAL: {failure})" if failure else ""
        return (f"the file {path} is not a raster GDAL can read: not a known raster format, or damaged"
                f"{detail}"), ()
    files = tuple(f for f in (ds.GetFileList() or ()) if not f.startswith("/vsi"))
    if ds.RasterCount == 0:
        return f"the file {path} holds no raster band", files
    return None, files
