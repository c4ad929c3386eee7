"""The engine's facade: raw Sentinel-2 SR arrays in, THOR tokens / grids / vectors out.

    emb = Embedder(ModelSpec(model_key="thor_v1_base"), scale_m=10.0, log=feedback.pushInfo)
    grid = emb.grid(raw_bchw, group_merge="mean")      # float32 [B, D, n, n]
    vec = emb.pooled(raw_bchw, pooling="mean")         # float32 [B, D]
    emb.metadata                                       # JSON-serialisable record of the run

Never prints (stdout is a JSON channel in headless runs); reports through ``log``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from . import accel, outputs
from .backends import create_backend, resolve_device
from .errors import ThorConfigError
from .preprocess import as_bchw, normalize, resize_bilinear, sanitize
from .specs import GROUP_MERGES, ModelSpec


class Embedder:
    """Runs one THOR configuration (model, weights, image size, patch size, normalisation,
    device, backend) on batches of raw SR input [B, 10, H, W] (band order B2..B12).

    Models are loaded through the process-wide cache, so a second Embedder with the same
    configuration reuses the loaded model.
    """

    def __init__(self, model: ModelSpec, scale_m: float = 10.0, log: Optional[Callable[[str], None]] = None):
        if not isinstance(model, ModelSpec):
            raise ThorConfigError(f"Embedder needs a ModelSpec, got {type(model).__name__}")
        try:
            scale = float(scale_m)
        except (TypeError, ValueError):
            raise ThorConfigError(f"scale_m must be a positive number of metres, got {scale_m!r}") from None
        if not scale > 0:
            raise ThorConfigError(f"scale_m must be a positive number of metres, got {scale_m!r}")
        from .limits import check_model

        check_model(model, scale)  # tokens per tile and memory, before anything is loaded
        self.model = model
        self.scale_m = scale
        self._log_fn = log
        self.device = resolve_device(model.device)
        self.precision, precision_why = accel.resolve_precision(model.precision, self.device)
        self._backend = create_backend(model, self.device, scale, log, self.precision)
        if getattr(self._backend, "cached", False):
            for w in self._backend.warnings:  # said when the model was loaded; say it again
                self._log("WARNING: " + w)
        layout = self._backend.layout
        self.layout = layout
        if model.batch_size:
            self.batch_size, batch_why = int(model.batch_size), f"{model.batch_size} (as set)"
        else:
            self.batch_size, batch_why = accel.auto_batch_size(
                self.device, layout.num_tokens, self._backend.embed_dim, model.image_size, self.precision)
        precision_detail = getattr(self._backend, "precision_detail", self.precision)
        self._log(f"THOR precision: {precision_why}; {precision_detail}. Tiles per batch: {batch_why}.")
        self.metadata: Dict[str, Any] = {
            "model_key": model.model_key,
            "backend": self._backend.name,
            "backend_requested": model.backend,
            "device": self.device,
            "weights": dict(self._backend.weights),
            "normalization": model.normalization,
            "image_size": int(model.image_size),
            "patch_size": int(model.patch_size),
            "scale_m": scale,
            "ground_cover_m": int(layout.ground_cover_m),
            "embed_dim": int(self._backend.embed_dim),
            "groups_used": list(layout.group_names),
            "tokens_per_group": [int(t) for t in layout.tokens_per_group],
            "num_tokens": int(layout.num_tokens),
            "grid_side": int(layout.max_side),
            "cls_removed": False,
            "output_tokens": "last block, before the final norm",
            "precision": self.precision,
            "precision_requested": model.precision,
            "matmul_precision": precision_detail,
            "batch_size": int(self.batch_size),
            "warnings": list(self._backend.warnings),
        }

    # ---- helpers ------------------------------------------------------------------------------

    def _log(self, msg: str) -> None:
        if self._log_fn is not None:
            try:
                self._log_fn(msg)
            except Exception:
                pass

    @property
    def backend(self) -> str:
        return self._backend.name

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Raw SR → normalised model input float32 [B, 10, S, S]."""
        arr = as_bchw(x)
        arr = normalize(sanitize(arr), self.model.normalization)
        return resize_bilinear(arr, self.model.image_size)

    def _sides(self):
        return self._backend.sides

    # ---- contract -----------------------------------------------------------------------------

    def tokens(self, x: np.ndarray) -> torch.Tensor:
        """Tokens [B, N, D] (CPU, float32) of raw SR input [B, 10, H, W], processed in chunks of
        the batch size (``model.batch_size``, or the automatic one)."""
        arr = as_bchw(x)
        bs = self.batch_size
        chunks: List[torch.Tensor] = []
        total = arr.shape[0]
        for start in range(0, total, bs):
            part = arr[start:start + bs]
            chunks.append(self._backend.tokens(self.prepare(part)))
            if total > bs:
                self._log(f"THOR: encoded {min(start + bs, total)}/{total} tiles")
        return torch.cat(chunks, dim=0) if len(chunks) > 1 else chunks[0]

    def grid(self, x: np.ndarray, group_merge: str = "mean") -> np.ndarray:
        """Group-aware grid, float32 [B, C, n, n] (C = D, or 2·D for ``concat``)."""
        merge = self._merge(group_merge)
        tok = self.tokens(x)
        grid, info = outputs.tokens_to_grid(tok, self._sides(), merge)
        self._last_grid_info = info
        return grid.numpy().astype(np.float32, copy=False)

    def pooled(self, x: np.ndarray, pooling: str = "mean") -> np.ndarray:
        """Mean (or max) over all patch tokens, float32 [B, D]."""
        tok = self.tokens(x)
        return outputs.pooled(tok, pooling).numpy().astype(np.float32, copy=False)

    def grid_channels(self, group_merge: str) -> int:
        sides = self._sides()
        return outputs.grid_channels(self._backend.embed_dim, len(sides) if sides else 1, self._merge(group_merge))

    def grid_side(self) -> int:
        sides = self._sides()
        return int(max(sides)) if sides else int(self.layout.max_side)

    def grid_info(self, group_merge: str) -> dict:
        merge = self._merge(group_merge)
        return outputs.grid_metadata(
            grid_kind="group_aware", group_merge=merge, channels=self.grid_channels(merge),
            side=self.grid_side(), groups=self.layout.group_names, tokens_per_group=self.layout.tokens_per_group)

    def torch_modules(self) -> List[torch.nn.Module]:
        """The model's torch modules (for cancel checks inside a forward)."""
        return [m for m in vars(self._backend).values() if isinstance(m, torch.nn.Module)]

    @staticmethod
    def _merge(group_merge: str) -> str:
        m = str(group_merge).strip().lower()
        if m not in GROUP_MERGES:
            raise ThorConfigError(f"group merge must be one of {', '.join(GROUP_MERGES)}, got {group_merge!r}")
        return m


__all__ = ["Embedder"]
