"""A plan before a grid run: what it will cost, said before the model is loaded.

:func:`grid_plan` reads a tile layout and the model's specification (no weights are loaded, no imagery
read) and returns the tiles, the token grid, the size of the output on disk, the Earth Engine requests
and an estimated time. The time comes from the stored per-tile figures of :mod:`.limits` (the builtin
encoder on a 2-core CPU), scaled by the number of tokens; on other devices there is no stored figure,
and the run's progress text gives the time left once the first tiles are done.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from . import limits
from .progress import format_duration
from .specs import ModelSpec
from .tiling import TileLayout

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


def seconds_per_tile(model: ModelSpec, device: str, scale_m: float = 10.0) -> Optional[float]:
    """The stored CPU figure (:mod:`.limits`) scaled by tokens per tile, or None on other devices."""
    if model.model_key not in limits.SECONDS_PER_TILE_CPU or device != "cpu":
        return None
    return limits.seconds_per_tile(model, scale_m)


def grid_plan(layout: TileLayout, model: ModelSpec, channels: int, device: str = "cpu",
              earth_engine: bool = False) -> GridPlan:
    """The plan of writing ``layout`` with ``model`` (``channels`` per token; ``device`` resolved)."""
    width, height = layout.output_size()
    per_tile = seconds_per_tile(model, device, layout.scale_m)
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
