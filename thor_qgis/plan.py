"""A plan before a grid run: what it will cost, said before the model is loaded.

:func:`grid_plan` reads a tile layout and the model's specification (no weights are loaded, no imagery
read) and returns the tiles, the token grid, the size of the output on disk, the Earth Engine requests
and an estimated time. The time comes from stored per-tile figures of the builtin encoder on a 2-core
CPU (288 px tiles, patch 16, batch 8), scaled by the number of tokens; on other devices there is no
stored figure, and the run's progress text gives the time left once the first tiles are done.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from .progress import format_duration
from .specs import ModelSpec
from .tiling import TileLayout

# Seconds per tile, builtin encoder, 288 px at patch 16 (18 x 18 tokens per group), batch 8, on a 2-core
# x86-64 CPU with torch's CPU build. tiny and base were measured (scripts/bench_encoder.py: 0.047 s and
# 0.78 s); small and large follow from them by the encoder's width and depth (the work per token grows
# with width² × depth: small = 4 × tiny, large = 3.6 × base).
CPU_SECONDS_PER_TILE = {
    "thor_v1_tiny": 0.047,
    "thor_v1_small": 0.19,
    "thor_v1_base": 0.78,
    "thor_v1_large": 2.8,
}
REFERENCE_GRID_SIDE = 18
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class GridPlan:
    tiles: int
    tiles_x: int
    tiles_y: int
    width: int  # output tokens
    height: int
    channels: int
    output_bytes: int  # float32, before compression
    tile_size_m: float
    pixel_size_m: float
    seams: str
    margin: int
    model_key: str
    device: str
    ee_requests: Optional[int] = None
    seconds_per_tile: Optional[float] = None
    estimated_seconds: Optional[float] = None

    def lines(self) -> List[str]:
        """The plan as log lines."""
        how = {"none": "tiles side by side",
               "crop": f"overlapping tiles, centres kept ({self.margin}-token margin)",
               "blend": f"overlapping tiles blended ({self.margin}-token margin)"}[self.seams]
        out = [f"Plan: {self.tiles:,} tile(s) of {self.tile_size_m:g} m ({self.tiles_x} × {self.tiles_y}), {how}.",
               f"Plan: token grid {self.width:,} × {self.height:,} pixels of {self.pixel_size_m:g} m, "
               f"{self.channels} channels; output about {_size(self.output_bytes)} (float32, before compression)."]
        if self.ee_requests is not None:
            out.append(f"Plan: {self.ee_requests:,} Earth Engine request(s) (fewer where the cache holds tiles).")
        if self.estimated_seconds is not None:
            out.append(f"Plan: about {format_duration(self.estimated_seconds)} for the model on a 2-core CPU "
                       f"({self.seconds_per_tile:.3g} s per tile for {self.model_key}; a faster machine takes less, "
                       "and the progress text gives the time left as measured in this run).")
        else:
            out.append(f"Plan: no stored time per tile for {self.model_key} on {self.device}: the progress text "
                       "gives the time left once the first tiles are done.")
        return out

    def as_record(self) -> Dict[str, Any]:
        return asdict(self)


def _size(n: int) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def seconds_per_tile(model: ModelSpec, device: str, grid_side: int) -> Optional[float]:
    """The stored CPU figure scaled by tokens per tile, or None where there is none (other devices)."""
    base = CPU_SECONDS_PER_TILE.get(model.model_key)
    if base is None or device != "cpu":
        return None
    return base * (grid_side / REFERENCE_GRID_SIDE) ** 2


def grid_plan(layout: TileLayout, model: ModelSpec, channels: int, device: str = "cpu",
              earth_engine: bool = False) -> GridPlan:
    """The plan of writing ``layout`` with ``model`` (``channels`` per token; ``device`` resolved)."""
    width, height = layout.output_size()
    per_tile = seconds_per_tile(model, device, layout.grid_side)
    return GridPlan(tiles=layout.n_tiles, tiles_x=layout.tiles_x, tiles_y=layout.tiles_y, width=width,
                    height=height, channels=int(channels),
                    output_bytes=int(width) * int(height) * int(channels) * FLOAT32_BYTES,
                    tile_size_m=layout.tile_size_m, pixel_size_m=layout.output_pixel_size(), seams=layout.seams,
                    margin=layout.margin, model_key=model.model_key, device=device,
                    ee_requests=layout.n_tiles if earth_engine else None, seconds_per_tile=per_tile,
                    estimated_seconds=None if per_tile is None else per_tile * layout.n_tiles)


def grid_channels(model: ModelSpec, group_merge: str, scale_m: float = 10.0) -> int:
    """Channels of the grid output without loading the model (D, or D × groups for concat)."""
    from .encoder import s2_layout
    from .outputs import grid_channels as channels

    groups = len(s2_layout(model.image_size, model.patch_size, scale_m).group_names)
    return channels(model.variant.embed_dim, groups, group_merge)
