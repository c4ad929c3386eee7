"""Tile layouts: how an area is cut into THOR tiles and where each tile's token grid lands.

A tile is a square of ground cover ``G = scale_m * image_size`` metres (2880 m by default), read as
``image_size x image_size`` pixels at ``scale_m``. Tiles are anchored at the area's top-left corner.
Each tile yields an ``n x n`` token grid (``n = image_size / patch_size``, 18 by default), written
into the output window it covers, so the output's pixel size is ``G / n`` and its georeferencing is
exact. The output covers whole tiles: it may reach past the area's right and bottom edges.

With a context margin of ``m`` tokens, tiles overlap: each tile is still ``G`` wide and embedded whole,
but only its central ``(n - 2m) x (n - 2m)`` tokens are written, and tiles advance by that much. Every
written token then sees at least ``m`` tokens of imagery around it, which evens out the steps between
tiles that a transformer's whole-tile context produces, at (n / (n - 2m))² times the compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

from .errors import ThorInputError

Bounds = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


@dataclass(frozen=True)
class Tile:
    index: int
    row: int
    col: int
    bounds: Bounds  # xmin, ymin, xmax, ymax in the layout's CRS


@dataclass(frozen=True)
class TileLayout:
    crs: str  # WKT or "EPSG:nnnn", metric
    origin_x: float  # top-left corner of the area
    origin_y: float
    tile_size_m: float  # G
    tiles_x: int
    tiles_y: int
    image_size: int  # pixels per tile side at scale_m
    grid_side: int  # tokens per tile side (n)
    area: Bounds  # the requested area, for the record
    margin: int = 0  # context margin in tokens: tiles overlap by 2 * margin tokens, the centre is written

    @property
    def scale_m(self) -> float:
        return self.tile_size_m / self.image_size

    @property
    def n_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def core(self) -> int:
        """Tokens per side written from each tile (n - 2 * margin)."""
        return self.grid_side - 2 * self.margin

    @property
    def step_m(self) -> float:
        """Distance between the origins of neighbouring tiles."""
        return self.core * self.output_pixel_size()

    def tiles(self) -> Iterator[Tile]:
        """Tiles in row-major order; ``bounds`` is the imagery a tile reads (margin included)."""
        g, step = self.tile_size_m, self.step_m
        pad = self.margin * self.output_pixel_size()
        i = 0
        for r in range(self.tiles_y):
            for c in range(self.tiles_x):
                x0 = self.origin_x + c * step - pad
                y1 = self.origin_y - r * step + pad
                yield Tile(i, r, c, (x0, y1 - g, x0 + g, y1))
                i += 1

    def written(self, grid):
        """The part of a tile's [..., n, n] token grid that goes into the output (its centre)."""
        m = self.margin
        return grid if m == 0 else grid[..., m:self.grid_side - m, m:self.grid_side - m]

    # The output token raster ---------------------------------------------------------------
    def output_pixel_size(self) -> float:
        return self.tile_size_m / self.grid_side

    def output_geotransform(self) -> Tuple[float, float, float, float, float, float]:
        px = self.output_pixel_size()
        return (self.origin_x, px, 0.0, self.origin_y, 0.0, -px)

    def output_size(self) -> Tuple[int, int]:
        """(width, height) of the output token raster in pixels."""
        return self.tiles_x * self.core, self.tiles_y * self.core

    def output_window(self, tile: Tile) -> Tuple[int, int, int, int]:
        """(xoff, yoff, width, height) of the tile's written tokens in the output raster."""
        k = self.core
        return tile.col * k, tile.row * k, k, k

    # The imagery grid at scale_m -----------------------------------------------------------
    def pixel_geotransform(self, tile: Tile) -> Tuple[float, float, float, float, float, float]:
        """Geotransform of the tile's ``image_size x image_size`` imagery at ``scale_m``."""
        s = self.scale_m
        return (tile.bounds[0], s, 0.0, tile.bounds[3], 0.0, -s)


def check_margin(margin: int, grid_side: int, image_size: int) -> int:
    """A context margin leaves a centre, and shifts tiles by whole pixels (so they stay on the grid)."""
    margin, n = int(margin), int(grid_side)
    if margin < 0 or 2 * margin >= n:
        raise ThorInputError(
            f"the context margin must be 0 to {(n - 1) // 2} tokens for a {n} x {n} token grid, got {margin}")
    if (margin * int(image_size)) % n:
        step = n // math.gcd(n, int(image_size))
        raise ThorInputError(
            f"a context margin of {margin} tokens is {margin * image_size / n:g} pixels, which would put tiles "
            f"off the pixel grid: use a multiple of {step}")
    return margin


def layout_for_area(bounds: Bounds, crs: str, scale_m: float, image_size: int, grid_side: int,
                    snap_to: float = 0.0, margin: int = 0) -> TileLayout:
    """Cut ``bounds`` (in the metric ``crs``) into tiles of ``scale_m * image_size`` metres.

    ``snap_to`` > 0 moves the top-left corner onto a multiple of that many metres (outwards), so that
    tile pixels line up with a source raster's pixel grid or a fixed UTM grid. ``margin`` (tokens) makes
    tiles overlap and keeps each tile's centre (see the module's docstring).
    """
    margin = check_margin(margin, grid_side, image_size)
    xmin, ymin, xmax, ymax = (float(b) for b in bounds)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise ThorInputError(f"the area's bounds are not finite numbers: {bounds}")
    if xmax <= xmin or ymax <= ymin:
        raise ThorInputError(
            f"the area is empty or inverted (xmin={xmin}, xmax={xmax}, ymin={ymin}, ymax={ymax}): "
            "give an extent with xmax > xmin and ymax > ymin")
    if snap_to > 0:
        xmin = math.floor(xmin / snap_to + 1e-9) * snap_to
        ymax = math.ceil(ymax / snap_to - 1e-9) * snap_to
    g = float(scale_m) * int(image_size)
    step = g * (int(grid_side) - 2 * margin) / int(grid_side)
    # a tiny tolerance so an area of exactly k tiles is not rounded up to k + 1
    tx = max(1, math.ceil((xmax - xmin) / step - 1e-9))
    ty = max(1, math.ceil((ymax - ymin) / step - 1e-9))
    return TileLayout(crs=crs, origin_x=xmin, origin_y=ymax, tile_size_m=g, tiles_x=tx, tiles_y=ty,
                      image_size=int(image_size), grid_side=int(grid_side),
                      area=(float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3])),
                      margin=margin)


def square_around(x: float, y: float, half_side: float) -> Bounds:
    """The square of side ``2 * half_side`` centred on (x, y)."""
    if not half_side > 0:
        raise ThorInputError(f"the buffer must be a positive distance, got {half_side}")
    return (x - half_side, y - half_side, x + half_side, y + half_side)


def bounding_square(bounds: Bounds) -> Bounds:
    """The smallest square with the same centre that contains ``bounds``."""
    xmin, ymin, xmax, ymax = bounds
    half = max(xmax - xmin, ymax - ymin) / 2.0
    cx, cy = (xmin + xmax) / 2.0, (ymin + ymax) / 2.0
    return (cx - half, cy - half, cx + half, cy + half)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone holding (lon, lat) (326zz north, 327zz south)."""
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ThorInputError(f"({lon}, {lat}) is not a longitude/latitude position")
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    # Norway and Svalbard exceptions of the UTM grid
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat < 84.0 and lon >= 0.0:
        if lon < 9.0:
            zone = 31
        elif lon < 21.0:
            zone = 33
        elif lon < 33.0:
            zone = 35
        elif lon < 42.0:
            zone = 37
    return (32600 if lat >= 0 else 32700) + zone


def batched(items: Sequence, size: int) -> List[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]
