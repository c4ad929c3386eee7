"""Up-front limits: a run that would exhaust memory or run for days is refused before anything loads.

Every limit here is a number with an environment variable that raises it, and the refusal gives the
estimate that tripped it:

- ``THOR_MAX_TOKENS`` (16 384): tokens per tile. Attention is quadratic in the token count: the ALiBi bias
  alone is heads x tokens² float32, 4.8 GiB for the base model at 10 000 tokens. The default configuration
  (image size 288, patch size 16) has 405.
- ``THOR_MAX_MEMORY_GB`` (default: 80 % of this computer's physical memory): the estimated peak memory of
  one batch through the model.
- ``THOR_MAX_TILES`` (10 000): tiles of a grid run from a raster (the Earth Engine path has the same
  limit on requests, ``THOR_EE_MAX_REQUESTS``).

No torch or GDAL here: the checks run in ``checkParameterValues`` and before the model loads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import ThorConfigError, ThorInputError
from .specs import MODEL_VARIANTS, ModelSpec

ENV_MAX_TOKENS = "THOR_MAX_TOKENS"
ENV_MAX_MEMORY_GB = "THOR_MAX_MEMORY_GB"
ENV_MAX_TILES = "THOR_MAX_TILES"
ENV_EE_MAX_REQUESTS = "THOR_EE_MAX_REQUESTS"
DEFAULT_MAX_TOKENS = 16384
DEFAULT_MAX_TILES = 10000
DEFAULT_EE_MAX_REQUESTS = 10000
MEMORY_FRACTION = 0.8

#: Seconds per tile at the default 405 tokens, batch 8, on a 2-core CPU (measured for tiny and base;
#: small and large interpolated by parameter count). A GPU is 10 to 100 times faster.
SECONDS_PER_TILE_CPU = {"thor_v1_tiny": 0.047, "thor_v1_small": 0.2, "thor_v1_base": 0.78, "thor_v1_large": 2.7}
DEFAULT_TOKENS = 405

GIB = 1024 ** 3


def _env_number(name: str, default: float, env: Optional[Mapping[str, str]] = None, integer: bool = True) -> float:
    env = os.environ if env is None else env
    raw = str(env.get(name, "") or "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not value > 0:
        kind = "a positive whole number" if integer else "a positive number"
        raise ThorConfigError(f"the environment variable {name} must be {kind}, got {raw!r}")
    return value


def tokens_per_tile(image_size: int, patch_size: int, scale_m: float = 10.0) -> int:
    """THOR's tokens for one Sentinel-2 tile: the 10 m group's (cover / (p·10 m))² plus the 20 m group's."""
    cover = float(scale_m) * int(image_size)
    p = int(patch_size)
    return sum(int(round(cover / (p * gsd))) ** 2 for gsd in (10, 20))


def physical_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None  # not POSIX: the memory check is skipped, the token limit still applies


@dataclass(frozen=True)
class ModelEstimate:
    tokens: int
    batch_size: int
    memory_bytes: int

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


def estimate_model(model: ModelSpec, scale_m: float = 10.0) -> ModelEstimate:
    """Peak memory of one batch, from the token count: building the ALiBi bias (float64 distances and
    bias, then the float32 bias kept), the attention scores of a batch (scores and softmax, float32),
    and the activations and weights (small beside them past a few thousand tokens)."""
    v = MODEL_VARIANTS[model.model_key]
    n = tokens_per_tile(model.image_size, model.patch_size, scale_m)
    b = int(model.batch_size) or 4  # 0 is automatic: 4 on a CPU (on a GPU, fitted to its free memory)
    h = v.num_heads
    bias_build = n * n * (16 + 8 + 8 * h + 4 * h)
    attention = 2 * b * h * n * n * 4 + n * n * h * 4
    activations = 12 * b * n * v.embed_dim * 4
    weights = 4 * 12 * v.embed_dim * v.embed_dim * v.depth + 256 * 1024 ** 2
    return ModelEstimate(n, b, int(max(bias_build, attention) + activations + weights))


def check_model(model: ModelSpec, scale_m: float = 10.0, env: Optional[Mapping[str, str]] = None) -> ModelEstimate:
    """Refuse a configuration whose tokens per tile or memory estimate is past the limits (ThorConfigError)."""
    check_cover(model, scale_m)
    est = estimate_model(model, scale_m)
    max_tokens = int(_env_number(ENV_MAX_TOKENS, DEFAULT_MAX_TOKENS, env))
    what = (f"image size {model.image_size} px at {float(scale_m):g} m with patch size {model.patch_size} gives "
            f"{est.tokens:,} tokens per tile (the default 288 / 16 gives {DEFAULT_TOKENS}); one batch of "
            f"{est.batch_size} through {model.model_key} would need about {est.memory_gib:,.1f} GiB of memory")
    if est.tokens > max_tokens:
        raise ThorConfigError(
            f"{what}, past the limit of {max_tokens:,} tokens per tile. Use a larger patch size or a smaller "
            f"image size (attention memory grows with the square of the tokens); to go past it anyway, set the "
            f"environment variable {ENV_MAX_TOKENS}.")
    limit_gb = _env_number(ENV_MAX_MEMORY_GB, 0.0, env, integer=False)
    if limit_gb:
        limit, whose = limit_gb * GIB, f"the limit of {limit_gb:g} GiB set by {ENV_MAX_MEMORY_GB}"
    else:
        phys = physical_memory_bytes()
        limit = MEMORY_FRACTION * phys if phys else None
        whose = (f"{int(MEMORY_FRACTION * 100)} % of this computer's {phys / GIB:.1f} GiB of memory" if phys
                 else "")
    if limit is not None and est.memory_bytes > limit:
        raise ThorConfigError(
            f"{what}, more than {whose}. Use fewer tiles per batch, a larger patch size or a smaller image "
            f"size; to go past it anyway, set the environment variable {ENV_MAX_MEMORY_GB} (GiB).")
    return est


def check_cover(model: ModelSpec, scale_m: float) -> None:
    """The ground a tile covers (image size x pixel size) must split into whole patches of the 10 m and the
    20 m bands; said in terms of the parameters the user set."""
    scale = float(scale_m)
    if not (scale > 0 and scale < 1e6):
        raise ThorConfigError(f"the pixel size must be a positive number of metres, got {scale_m!r}")
    cover = scale * model.image_size
    need = model.patch_size * 20
    if round(cover) < need or abs(cover - round(cover)) > 1e-6 or round(cover) % need:
        raise ThorConfigError(
            f"a tile of {model.image_size} px at a pixel size of {scale:g} m covers {cover:g} m, which patch size "
            f"{model.patch_size} cannot cut into whole patches of the 10 m and 20 m bands (it needs a multiple "
            f"of {model.patch_size} x 20 m = {need} m). THOR reads Sentinel-2 at 10 m: keep the pixel size at 10 "
            "m, or pick an image size and pixel size whose product is such a multiple")


def seconds_per_tile(model: ModelSpec, scale_m: float = 10.0) -> float:
    n = tokens_per_tile(model.image_size, model.patch_size, scale_m)
    base = SECONDS_PER_TILE_CPU.get(model.model_key, 1.0)
    return base * (n / DEFAULT_TOKENS) * max(1.0, n / DEFAULT_TOKENS) ** 0.5


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _size(nbytes: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= f:
            return f"{nbytes / f:,.1f} {unit}"
    return f"{nbytes / 1e3:,.0f} kB"


def check_tiles(n_tiles: int, *, model: Optional[ModelSpec] = None, scale_m: float = 10.0,
                output_pixels: Optional[int] = None, channels: Optional[int] = None, what: str = "tiles",
                env_var: str = ENV_MAX_TILES, default: int = DEFAULT_MAX_TILES, hint: str = "",
                env: Optional[Mapping[str, str]] = None) -> None:
    """Refuse a run of more than the limit of ``n_tiles`` (ThorInputError), with its estimate: tiles,
    uncompressed output size and time on a CPU at the measured speed, and how to raise the limit."""
    limit = int(_env_number(env_var, default, env))
    if n_tiles <= limit:
        return
    parts = []
    if output_pixels is not None and channels:
        parts.append(f"an output of up to {_size(float(output_pixels) * channels * 4)} (float32, before "
                     "compression)")
    if model is not None:
        parts.append(f"about {_duration(n_tiles * seconds_per_tile(model, scale_m))} of {model.model_key} on a "
                     "2-core CPU")
    est = f" ({'; '.join(parts)})" if parts else ""
    raise ThorInputError(
        f"this area needs {n_tiles:,} {what}{est}, more than the limit of {limit:,}. {hint}"
        f"To run it anyway, raise the limit with the environment variable {env_var}.")


def check_grid(layout, model: ModelSpec, group_merge: str, scale_m: float = 10.0, hint: str = "",
               env: Optional[Mapping[str, str]] = None) -> None:
    """Refuse a grid run from a raster past the tile limit, with its estimate (output size from the layout and
    the channels the group merge gives)."""
    width, height = layout.output_size()
    channels = model.variant.embed_dim * (2 if group_merge == "concat" else 1)
    check_tiles(layout.n_tiles, model=model, scale_m=scale_m, output_pixels=width * height, channels=channels,
                what=f"tiles of {layout.tile_size_m:g} m", hint=hint, env=env)


def check_requests(n: int, what: str, hint: str = "", env: Optional[Mapping[str, str]] = None, **estimate) -> None:
    """Refuse a run that would send more than ``$THOR_EE_MAX_REQUESTS`` Earth Engine requests: usually an extent
    typed in the wrong order or the wrong CRS, which would otherwise run for days."""
    check_tiles(n, what=f"Earth Engine requests ({what})", env_var=ENV_EE_MAX_REQUESTS,
                default=DEFAULT_EE_MAX_REQUESTS, hint=hint, env=env, **estimate)
