"""Frozen, validated specifications of what a THOR run needs.

Every run is described by four specs: where (spatial, handled by the callers), when
(:class:`TemporalSpec`), what imagery (:class:`SensorSpec`), which model (:class:`ModelSpec`) and
what output (:class:`OutputSpec`). Defaults are those of the reference adapter; the ``RS_EMBED_THOR_*``
environment variables of that adapter may supply defaults (see :func:`model_spec_from_env`), explicit
values always win, and :func:`resolved_config` records what was actually used with every output.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ThorConfigError

# --------------------------------------------------------------------------------------------
# Model variants: one record per variant is the single source of its configuration.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVariant:
    key: str
    hub_repo: str
    hub_file: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size_embed_dim: int  # the sincos part of the per-group constant
    group_embed_dim: int  # band_embed.group<k> length

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


MODEL_VARIANTS: Dict[str, ModelVariant] = {
    v.key: v
    for v in (
        ModelVariant("thor_v1_tiny", "FM4CS/THOR-1.0-tiny", "thor_v1_vit_tiny.pt", 192, 12, 3, 160, 32),
        ModelVariant("thor_v1_small", "FM4CS/THOR-1.0-small", "thor_v1_vit_small.pt", 384, 12, 6, 320, 64),
        ModelVariant("thor_v1_base", "FM4CS/THOR-1.0-base", "thor_v1_vit_base.pt", 768, 12, 12, 640, 128),
        ModelVariant("thor_v1_large", "FM4CS/THOR-1.0-large", "thor_v1_vit_large.pt", 1024, 24, 16, 768, 256),
    )
}

# Sentinel-2 SR bands the adapter feeds THOR, in input order, with THOR's names and GSD (m).
S2_BANDS: Tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S2_THOR_NAMES: Dict[str, str] = {
    "B2": "S2:Blue", "B3": "S2:Green", "B4": "S2:Red", "B5": "S2:RE1", "B6": "S2:RE2",
    "B7": "S2:RE3", "B8": "S2:NIR", "B8A": "S2:RE4", "B11": "S2:SWIR1", "B12": "S2:SWIR2",
}
S2_GSD_M: Dict[str, int] = {
    "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10, "B8A": 20, "B11": 20, "B12": 20,
}
# THOR pretraining statistics of reflectance/10000, in S2_BANDS order.
THOR_MEAN: Tuple[float, ...] = (0.176620, 0.195923, 0.213948, 0.263378, 0.300818,
                                0.313144, 0.308133, 0.320993, 0.221550, 0.175772)
THOR_STD: Tuple[float, ...] = (0.264520, 0.252949, 0.259180, 0.272771, 0.248175,
                               0.235432, 0.226434, 0.223274, 0.171606, 0.156223)

DEFAULT_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
NORMALIZATIONS = ("thor_stats", "unit_scale", "none")
GROUP_MERGES = ("mean", "sum", "concat")
POOLINGS = ("mean", "max")
OUTPUT_KINDS = ("pooled", "grid")
COMPOSITES = ("median", "mean", "min", "max", "mosaic")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Numeric precision of the encoder (see :mod:`.precision`): float32 is exact; auto opts in to a reduced
#: precision where the hardware runs it natively (never chosen unless asked for).
PRECISIONS = ("float32", "bfloat16", "float16", "auto")
BACKENDS = ("auto", "builtin", "terratorch")
WEIGHT_SOURCES = ("hub", "checkpoint", "random")

ENV_PREFIX = "RS_EMBED_THOR_"


def _choice(name: str, value: Any, allowed: Tuple[str, ...]) -> str:
    v = str(value).strip().lower() if value is not None else ""
    if v not in allowed:
        raise ThorConfigError(
            f"{name} must be {_or_list(allowed)}, got {value!r}")
    return v


def _or_list(allowed: Tuple[str, ...]) -> str:
    allowed = tuple(allowed)
    if len(allowed) == 1:
        return allowed[0]
    return ", ".join(allowed[:-1]) + " or " + allowed[-1]


def _positive_int(name: str, value: Any) -> int:
    try:
        fv = float(value)
    except (TypeError, ValueError):
        fv = float("nan")
    if isinstance(value, bool) or not fv == fv or fv != int(fv) or fv <= 0:
        raise ThorConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(fv)


def _batch_size(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    try:
        if not isinstance(value, bool) and float(value) == 0:
            return 0
    except (TypeError, ValueError):
        pass
    try:
        return _positive_int("batch size", value)
    except ThorConfigError:
        raise ThorConfigError(f"batch size must be a positive integer, or 0 for automatic, got {value!r}") from None


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ThorConfigError(f"{name} must be true or false, got {value!r}")


# --------------------------------------------------------------------------------------------
# Sensor and temporal specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorSpec:
    collection: str = DEFAULT_COLLECTION
    bands: Tuple[str, ...] = S2_BANDS
    scale_m: float = 10.0
    cloudy_pct: float = 30.0
    composite: str = "median"
    fill_value: float = 0.0

    def __post_init__(self):
        if not isinstance(self.collection, str) or not self.collection.strip():
            raise ThorConfigError("collection must be a non-empty Earth Engine collection id")
        bands = tuple(self.bands)
        if bands != S2_BANDS:
            raise ThorConfigError(
                "THOR's Sentinel-2 input takes exactly the bands " + " ".join(S2_BANDS)
                + f" in this order, got {' '.join(map(str, bands))}")
        object.__setattr__(self, "bands", bands)
        try:
            scale = float(self.scale_m)
        except (TypeError, ValueError):
            raise ThorConfigError(f"scale_m must be a positive number of metres, got {self.scale_m!r}") from None
        if not scale > 0:
            raise ThorConfigError(f"scale_m must be a positive number of metres, got {self.scale_m!r}")
        object.__setattr__(self, "scale_m", scale)
        try:
            cloudy = float(self.cloudy_pct)
        except (TypeError, ValueError):
            raise ThorConfigError(f"cloudy_pct must be a number from 0 to 100, got {self.cloudy_pct!r}") from None
        if not 0 <= cloudy <= 100:
            raise ThorConfigError(f"cloudy_pct must be a number from 0 to 100, got {self.cloudy_pct!r}")
        object.__setattr__(self, "cloudy_pct", cloudy)
        object.__setattr__(self, "composite", _choice("composite", self.composite, COMPOSITES))
        try:
            object.__setattr__(self, "fill_value", float(self.fill_value))
        except (TypeError, ValueError):
            raise ThorConfigError(f"fill_value must be a number, got {self.fill_value!r}") from None


def _parse_date(name: str, value: Any) -> _dt.date:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ThorConfigError(f"{name} must be an ISO date (YYYY-MM-DD), got {value!r}") from None


@dataclass(frozen=True)
class TemporalSpec:
    """A date range [start, end) used for compositing."""

    start: _dt.date
    end: _dt.date

    def __post_init__(self):
        start = _parse_date("start date", self.start)
        end = _parse_date("end date", self.end)
        if not start < end:
            raise ThorConfigError(f"start date {start.isoformat()} must be before end date {end.isoformat()}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def iso(self) -> Tuple[str, str]:
        return self.start.isoformat(), self.end.isoformat()


# --------------------------------------------------------------------------------------------
# Output spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    kind: str = "grid"
    pooling: str = "mean"  # for kind == "pooled"
    group_merge: str = "mean"  # for kind == "grid"

    def __post_init__(self):
        object.__setattr__(self, "kind", _choice("output kind", self.kind, OUTPUT_KINDS))
        object.__setattr__(self, "pooling", _choice("pooling", self.pooling, POOLINGS))
        object.__setattr__(self, "group_merge", _choice("group merge", self.group_merge, GROUP_MERGES))


# --------------------------------------------------------------------------------------------
# Model spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which THOR model and how to run it.

    ``weights`` is ``hub`` (the official checkpoint through the Hugging Face cache), ``checkpoint``
    (a local file at ``checkpoint``), or ``random`` (random init, only when asked; recorded loudly).
    """

    model_key: str = "thor_v1_base"
    weights: str = "hub"
    checkpoint: Optional[str] = None
    image_size: int = 288
    patch_size: int = 16
    normalization: str = "thor_stats"
    device: str = "auto"
    backend: str = "auto"
    batch_size: int = 0  # 0: automatic (4 on a CPU, from free memory on a CUDA GPU)
    precision: str = "float32"

    def __post_init__(self):
        key = str(self.model_key).strip().lower()
        if key not in MODEL_VARIANTS:
            raise ThorConfigError(f"model key must be {_or_list(tuple(MODEL_VARIANTS))}, got {self.model_key!r}")
        object.__setattr__(self, "model_key", key)
        weights = _choice("weights", self.weights, WEIGHT_SOURCES)
        ckpt = self.checkpoint
        if ckpt is not None and str(ckpt).strip() == "":
            ckpt = None
        if weights == "checkpoint" and ckpt is None:
            raise ThorConfigError("weights = checkpoint needs the path of a local checkpoint file")
        if weights != "checkpoint" and ckpt is not None:
            raise ThorConfigError(f"a checkpoint path was given but weights = {weights}; use weights = checkpoint")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "checkpoint", None if ckpt is None else os.fspath(ckpt))
        img = _positive_int("image size", self.image_size)
        p = _positive_int("patch size", self.patch_size)
        if img % 2:
            raise ThorConfigError(f"image size must be even (20 m bands are resampled to half of it), got {img}")
        if img % p or (img // 2) % p:
            raise ThorConfigError(
                f"image size {img} is not divisible by the patch size {p} for both the 10 m grid ({img}) "
                f"and the 20 m grid ({img // 2}); pick an image size that is a multiple of {2 * p}")
        object.__setattr__(self, "image_size", img)
        object.__setattr__(self, "patch_size", p)
        object.__setattr__(self, "normalization", _choice("normalization", self.normalization, NORMALIZATIONS))
        object.__setattr__(self, "device", _choice("device", self.device, DEVICES))
        object.__setattr__(self, "backend", _choice("backend", self.backend, BACKENDS))
        object.__setattr__(self, "batch_size", _batch_size(self.batch_size))
        object.__setattr__(self, "precision", _choice("precision", self.precision, PRECISIONS))
        if self.precision == "float16" and self.device == "cpu":
            raise ThorConfigError("precision float16 runs on a GPU only (CUDA or Apple MPS); on the CPU use "
                                  "bfloat16 (fast on CPUs with AVX512-BF16 or AMX) or float32")

    @property
    def variant(self) -> ModelVariant:
        return MODEL_VARIANTS[self.model_key]

    def grid_side(self, scale_m: float = 10.0) -> int:
        """Tokens per side of the 10 m group's grid: ground cover / (patch size x 10 m), 18 at image size
        288, patch 16 and scale 10 m (the encoder resizes each band to ground cover / its GSD)."""
        return int(round(self.ground_cover_m(scale_m) / (self.patch_size * 10.0)))

    def ground_cover_m(self, scale_m: float = 10.0) -> float:
        return float(scale_m) * self.image_size


def model_spec_from_env(env: Optional[Mapping[str, str]] = None, **explicit: Any) -> Tuple[ModelSpec, Dict[str, str]]:
    """Build a :class:`ModelSpec` from explicit values, with ``RS_EMBED_THOR_*`` defaults.

    Explicit values (not None) win over the environment, which wins over the built-in defaults.
    Returns the spec and a dict naming where each value came from ("explicit", "env:NAME", "default").

    Environment variables read: MODEL_KEY, CKPT (a local checkpoint path; implies weights=checkpoint),
    PRETRAINED (false → random weights), IMG, PATCH_SIZE, NORMALIZE, PRECISION (setting it to auto or a
    reduced precision is an opt-in, like choosing it in the algorithm).
    GROUP_MERGE and FETCH_WORKERS belong to the output and fetch settings: see :func:`env_default`.
    """
    env = os.environ if env is None else env
    values: Dict[str, Any] = {}
    source: Dict[str, str] = {}
    env_map = {
        "model_key": "MODEL_KEY",
        "image_size": "IMG",
        "patch_size": "PATCH_SIZE",
        "normalization": "NORMALIZE",
        "precision": "PRECISION",
    }
    for fld, var in env_map.items():
        if explicit.get(fld) is not None:
            values[fld] = explicit[fld]
            source[fld] = "explicit"
        elif env.get(ENV_PREFIX + var, "").strip():
            values[fld] = env[ENV_PREFIX + var].strip()
            source[fld] = "env:" + ENV_PREFIX + var
    # weights / checkpoint
    if explicit.get("weights") is not None or explicit.get("checkpoint") is not None:
        w = explicit.get("weights")
        ck = explicit.get("checkpoint")
        if w is None:
            w = "checkpoint" if ck else "hub"
        values["weights"] = w
        values["checkpoint"] = ck
        source["weights"] = "explicit"
    else:
        ck = env.get(ENV_PREFIX + "CKPT", "").strip()
        pre = env.get(ENV_PREFIX + "PRETRAINED", "").strip()
        if ck:
            values["weights"], values["checkpoint"] = "checkpoint", ck
            source["weights"] = "env:" + ENV_PREFIX + "CKPT"
        elif pre and not _parse_bool(ENV_PREFIX + "PRETRAINED", pre):
            values["weights"] = "random"
            source["weights"] = "env:" + ENV_PREFIX + "PRETRAINED"
    for fld in ("device", "backend", "batch_size"):
        if explicit.get(fld) is not None:
            values[fld] = explicit[fld]
            source[fld] = "explicit"
    for f in dataclasses.fields(ModelSpec):
        source.setdefault(f.name, "default")
    return ModelSpec(**values), source


def check_env(env: Optional[Mapping[str, str]] = None) -> None:
    """Refuse invalid ``RS_EMBED_THOR_*`` values, naming the variable (they would otherwise be dropped
    silently for the built-in defaults)."""
    env = os.environ if env is None else env

    def value(var: str) -> str:
        return str(env.get(ENV_PREFIX + var, "") or "").strip()

    checks = (
        ("MODEL_KEY", lambda v: _check_in("model key", v, tuple(MODEL_VARIANTS))),
        ("IMG", lambda v: _positive_int("image size", v)),
        ("PATCH_SIZE", lambda v: _positive_int("patch size", v)),
        ("NORMALIZE", lambda v: _choice("normalization", v, NORMALIZATIONS)),
        ("PRETRAINED", lambda v: _parse_bool("it", v)),
        ("GROUP_MERGE", lambda v: _choice("group merge", v, GROUP_MERGES)),
        ("FETCH_WORKERS", lambda v: _positive_int("fetch workers", v)),
    )
    for var, check in checks:
        v = value(var)
        if not v:
            continue
        try:
            check(v)
        except ThorConfigError as e:
            raise ThorConfigError(f"the environment variable {ENV_PREFIX}{var} is invalid: {e}. Fix or unset "
                                  "it") from None
    ck = value("CKPT")
    if ck and not os.path.isfile(os.path.expanduser(ck)):
        raise ThorConfigError(f"the environment variable {ENV_PREFIX}CKPT names {ck}, which is not a file. Fix "
                              "or unset it")
    try:
        model_spec_from_env(env)
    except ThorConfigError as e:
        raise ThorConfigError(f"the RS_EMBED_THOR_* environment variables do not fit together: {e}") from None


def _check_in(name: str, value: Any, allowed: Tuple[str, ...]) -> str:
    v = str(value).strip().lower()
    if v not in allowed:
        raise ThorConfigError(f"{name} must be {_or_list(allowed)}, got {value!r}")
    return v


def env_default(name: str, default: Any, env: Optional[Mapping[str, str]] = None) -> Any:
    """The ``RS_EMBED_THOR_<name>`` environment value if set and non-empty, else ``default``."""
    env = os.environ if env is None else env
    v = env.get(ENV_PREFIX + name, "").strip()
    return v if v else default


def default_fetch_workers(env: Optional[Mapping[str, str]] = None) -> int:
    return _positive_int("fetch workers", env_default("FETCH_WORKERS", 8, env))


def default_group_merge(env: Optional[Mapping[str, str]] = None) -> str:
    return _choice("group merge", env_default("GROUP_MERGE", "mean", env), GROUP_MERGES)


def resolved_config(model: ModelSpec, output: OutputSpec, sensor: Optional[SensorSpec] = None,
                    temporal: Optional[TemporalSpec] = None, **extra: Any) -> Dict[str, Any]:
    """A JSON-serialisable record of a run's resolved configuration."""
    cfg: Dict[str, Any] = {
        "model": dataclasses.asdict(model),
        "output": dataclasses.asdict(output),
    }
    if sensor is not None:
        s = dataclasses.asdict(sensor)
        s["bands"] = list(sensor.bands)
        cfg["sensor"] = s
        cfg["ground_cover_m"] = model.ground_cover_m(sensor.scale_m)
    if temporal is not None:
        cfg["temporal"] = {"start": temporal.start.isoformat(), "end": temporal.end.isoformat()}
    cfg.update(extra)
    return cfg
