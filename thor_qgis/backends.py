"""Backend and device selection.

``builtin``     the engine's own encoder (:mod:`.encoder`): torch only.
``terratorch``  the official stack: terratorch's BACKBONE_REGISTRY with the thor_terratorch_ext
                backbone, built with the reference adapter's arguments.
``auto``        terratorch when it and thor_terratorch_ext import, else builtin.

Both backends take normalised input [B, 10, S, S] (B2..B12) and return tokens [B, N, D] on the
CPU; the same output code (:mod:`.outputs`) turns them into grids and vectors.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import accel
from .encoder import (PRECISION_LOCK, TokenLayout, full_fp32_precision, precision_restore,
                      precision_snapshot, s2_layout)
from .errors import ThorBackendError, ThorConfigError
from .specs import ModelSpec
from .weights import (MODEL_CACHE, RANDOM_WEIGHTS_WARNING, LogFn, _log, load_builtin_encoder,
                      resolve_checkpoint_file, validate_checkpoint_file, weights_token)

#: What the terratorch backend needs, for error messages.
TERRATORCH_INSTALL_HINT = (
    "backend = terratorch needs the packages terratorch (1.2.4) and thor_terratorch_ext (0.2.1, "
    "https://github.com/FM4CS/thor_terratorch_ext, which also installs thor from "
    "https://github.com/FM4CS/THOR v1.0.2) in the Python environment QGIS uses. Note that they pin "
    "timm/torchvision versions that may not suit a CPU-only torch or QGIS's numpy. "
    "Use backend = builtin (torch only, same checkpoints) or auto instead.")

#: Band names the reference adapter passes to thor_terratorch_ext as model_bands, in the
#: input order B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 (terratorch / HLS band enum values,
#: which the extension maps to S2:Blue ... S2:SWIR2).
TERRATORCH_MODEL_BANDS: Tuple[str, ...] = (
    "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3", "NIR_BROAD", "NIR_NARROW",
    "SWIR_1", "SWIR_2",
)


# --------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``mps`` (Apple Silicon), else ``cpu``; an explicit
    ``cuda`` or ``mps`` torch cannot use is an error (see :func:`.accel.resolve_device`)."""
    return accel.resolve_device(device)


# --------------------------------------------------------------------------------------------
# terratorch availability
# --------------------------------------------------------------------------------------------

_TT_STATUS: Optional[Tuple[bool, str]] = None


def terratorch_installed() -> bool:
    """Both packages are installed (found on the path), without importing them."""
    try:
        return (importlib.util.find_spec("terratorch") is not None
                and importlib.util.find_spec("thor_terratorch_ext") is not None)
    except (ImportError, ValueError):
        return False


def terratorch_status() -> Tuple[bool, str]:
    """(importable, reason). Imports terratorch and thor_terratorch_ext once, lazily, and puts
    back torch's float32 matmul precision, which importing terratorch changes process-wide."""
    global _TT_STATUS
    with PRECISION_LOCK:
        if _TT_STATUS is not None:
            return _TT_STATUS
        if not terratorch_installed():
            missing = [m for m in ("terratorch", "thor_terratorch_ext") if _spec_missing(m)]
            _TT_STATUS = (False, "not installed: " + ", ".join(missing))
            return _TT_STATUS
        snap = precision_snapshot()
        try:
            importlib.import_module("terratorch")
            importlib.import_module("terratorch.registry")
            importlib.import_module("thor_terratorch_ext")
            _TT_STATUS = (True, "")
        except Exception as exc:  # ImportError, but also broken binary deps (torchvision, numpy ABI)
            _TT_STATUS = (False, f"import failed: {type(exc).__name__}: {exc}")
        finally:
            precision_restore(snap)
        return _TT_STATUS


def _spec_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def resolve_backend(backend: str = "auto", log: LogFn = None) -> str:
    """``builtin`` or ``terratorch`` for a requested backend (auto / builtin / terratorch)."""
    b = str(backend if backend is not None else "auto").strip().lower()
    if b == "builtin":
        return "builtin"
    if b == "terratorch":
        ok, why = terratorch_status()
        if not ok:
            raise ThorBackendError(f"the terratorch backend is not available ({why}). " + TERRATORCH_INSTALL_HINT)
        return "terratorch"
    if b == "auto":
        if not terratorch_installed():
            return "builtin"
        ok, why = terratorch_status()
        if ok:
            return "terratorch"
        _log(log, f"THOR backend auto: terratorch is installed but unusable ({why}); using builtin")
        return "builtin"
    raise ThorConfigError(f"backend must be one of auto, builtin, terratorch, got {backend!r}")


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


class Backend:
    """Common interface: ``tokens(x)`` for normalised input [B, 10, S, S] → [B, N, D] (CPU, float32)."""

    name = "?"
    model: ModelSpec
    device: str
    layout: TokenLayout
    weights: Dict[str, Any]
    warnings: List[str]
    embed_dim: int
    precision: str = "float32"  # resolved: float32, bfloat16 or float16

    def tokens(self, x: np.ndarray) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        """Input on the device: on CUDA through pinned memory with a non-blocking copy."""
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if accel.device_kind(self.device) == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _run(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, NotImplementedError) as exc:
            if accel.device_kind(self.device) == "mps":
                clear = accel.mps_op_error(exc)
                if clear is not None:
                    raise clear from exc
            raise

    @property
    def sides(self) -> Optional[Tuple[int, ...]]:
        return self.layout.sides

    @property
    def group_names(self) -> Tuple[str, ...]:
        return self.layout.group_names


class BuiltinBackend(Backend):
    name = "builtin"

    def __init__(self, model: ModelSpec, device: str, scale_m: float = 10.0, log: LogFn = None,
                 precision: str = "float32"):
        self.model = model
        self.device = device
        self.precision = precision
        self.layout = s2_layout(model.image_size, model.patch_size, scale_m)
        key = (model.model_key, weights_token(model), device, model.patch_size, "builtin")

        def factory():
            enc, meta, warns = load_builtin_encoder(model, log)
            return enc.to(device), meta, list(warns)

        (self.encoder, meta, warns), self.cached = MODEL_CACHE.get_or_create(key, factory)
        if self.cached:
            _log(log, f"THOR model reused from the cache: {model.model_key} on {device}")
        self.cache_key = key
        self.weights = dict(meta)
        self.warnings = list(warns)
        self.embed_dim = self.encoder.embed_dim

    def tokens(self, x: np.ndarray) -> torch.Tensor:
        out = self._run(self.encoder, self._to_device(x), self.layout, precision=self.precision)
        return out.detach().to("cpu", torch.float32)

    @property
    def precision_detail(self) -> str:
        if self.precision == "float32":
            return "float32 matrix products at full precision (independent of torch's global setting)"
        path = self.encoder.reduced_linear_path(accel.DTYPES[self.precision])
        return (f"{self.precision} linear layers and attention ({path}); residual stream, LayerNorm, softmax, "
                "patch embedding, group merge and outputs in float32")


class TerratorchBackend(Backend):
    """The official stack, built like the reference adapter (rs-embed's THOR adapter):
    ``BACKBONE_REGISTRY.build(model_key, pretrained=..., model_bands=[BLUE ... SWIR_2],
    out_indices=[-1], return_channel_params=True, input_params={"ground_covers": [G],
    "flexivit_patch_size_seqs": [p]}, ckpt=path)``. The wrapper resizes every band to
    G / GSD itself and returns ``([tokens of the last block], channel_params)``."""

    name = "terratorch"

    def __init__(self, model: ModelSpec, device: str, scale_m: float = 10.0, log: LogFn = None,
                 precision: str = "float32"):
        ok, why = terratorch_status()
        if not ok:
            raise ThorBackendError(f"the terratorch backend is not available ({why}). " + TERRATORCH_INSTALL_HINT)
        self.model = model
        self.device = device
        self.precision = precision
        self.layout = s2_layout(model.image_size, model.patch_size, scale_m)
        gc = self.layout.ground_cover_m
        key = (model.model_key, weights_token(model), device, model.patch_size, "terratorch", gc)

        def factory():
            return self._build(model, device, gc, log)

        (self.net, meta, warns), self.cached = MODEL_CACHE.get_or_create(key, factory)
        self.cache_key = key
        self.weights = dict(meta)
        self.warnings = list(warns)
        self.embed_dim = model.variant.embed_dim
        self._sides: Optional[Tuple[int, ...]] = None

    @staticmethod
    def _build(model: ModelSpec, device: str, ground_cover: int, log: LogFn):
        path, meta = resolve_checkpoint_file(model, log)
        warns: List[str] = []
        if path is not None:
            # thor_terratorch_ext loads with strict=False; validate first so that a wrong or
            # incomplete file is an error here too.
            unexpected = validate_checkpoint_file(path, model.model_key)
            if unexpected:
                warns.append(f"checkpoint keys not used by the encoder: {', '.join(unexpected[:5])}")
        else:
            warns.append(RANDOM_WEIGHTS_WARNING)
            _log(log, "WARNING: " + RANDOM_WEIGHTS_WARNING)
        kwargs: Dict[str, Any] = {
            "pretrained": path is not None,
            "model_bands": list(TERRATORCH_MODEL_BANDS),
            "out_indices": [-1],
            "return_channel_params": True,
            "input_params": {
                "ground_covers": [int(ground_cover)],
                "flexivit_patch_size_seqs": [int(model.patch_size)],
            },
        }
        if path is not None:
            kwargs["ckpt"] = path
        snap = precision_snapshot()
        try:
            from terratorch.registry import BACKBONE_REGISTRY

            net = BACKBONE_REGISTRY.build(model.model_key, **kwargs)
        except Exception as exc:
            raise ThorBackendError(
                f"terratorch could not build the THOR backbone {model.model_key} ({type(exc).__name__}: {exc}). "
                "Check the terratorch / thor_terratorch_ext installation, or use backend = builtin.") from exc
        finally:
            precision_restore(snap)
        net = net.to(device).eval()
        _log(log, f"THOR backbone built through terratorch: {model.model_key} on {device}")
        return net, meta, warns

    def tokens(self, x: np.ndarray) -> torch.Tensor:
        t = self._to_device(x)
        with torch.inference_mode(), full_fp32_precision(), self._autocast():
            out = self._run(self.net, t)
        feats, channel_params = out if isinstance(out, tuple) and len(out) >= 2 else (out, None)
        if not isinstance(feats, (list, tuple)) or not feats:
            raise ThorBackendError(f"the terratorch THOR backbone returned {type(feats).__name__}, "
                                   "expected a list of token tensors")
        tok = feats[-1]
        if not torch.is_tensor(tok) or tok.ndim != 3:
            raise ThorBackendError(f"the terratorch THOR backbone returned tokens of shape "
                                   f"{getattr(tok, 'shape', None)}, expected [B, N, D]")
        sides = self._sides_from(channel_params)
        if sides is not None and sum(s * s for s in sides) == tok.shape[1]:
            self._sides = sides
        return tok.detach().to("cpu", torch.float32)

    def _autocast(self):
        """The official network runs as it is in float32; in a reduced precision, under torch's autocast."""
        import contextlib

        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(accel.device_kind(self.device), dtype=accel.DTYPES[self.precision])

    @property
    def precision_detail(self) -> str:
        if self.precision == "float32":
            return "float32 matrix products at full precision (independent of torch's global setting)"
        return f"{self.precision} under torch.autocast around the official network; outputs in float32"

    def _sides_from(self, channel_params: Any) -> Optional[Tuple[int, ...]]:
        groups = getattr(self.net, "groups", None)
        if not isinstance(channel_params, dict) or not isinstance(groups, dict):
            return None
        sides = []
        for members in groups.values():
            m = next((b for b in members if isinstance(channel_params.get(b), dict)
                      and channel_params[b].get("num_patch") is not None), None)
            if m is None:
                continue
            sides.append(int(channel_params[m]["num_patch"]))
        return tuple(sides) or None

    @property
    def sides(self) -> Optional[Tuple[int, ...]]:
        return self._sides if self._sides is not None else self.layout.sides


def create_backend(model: ModelSpec, device: str, scale_m: float = 10.0, log: LogFn = None,
                   precision: str = "float32") -> Backend:
    name = resolve_backend(model.backend, log)
    if name == "terratorch":
        return TerratorchBackend(model, device, scale_m, log, precision)
    return BuiltinBackend(model, device, scale_m, log, precision)
