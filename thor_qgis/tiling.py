"""Tile layouts: how an area is cut into THOR tiles and where each tile's token grid lands.

A tile is a square of ground cover ``G = scale_m * image_size`` metres (2880 m by default), read as
``image_size x image_size`` pixels at ``scale_m``. Each tile yields an ``n x n`` token grid
(``n = image_size / patch_size``, 18 by default), so the output's pixel (a token) is ``G / n`` metres.

**The global grid** (:func:`global_layout`, what the grid algorithms use). Tiles sit on a grid fixed in
the output CRS: tile ``(I, J)`` starts ``I`` tile steps east of and ``J`` steps south of the grid's anchor,
the CRS origin (plus a raster's sub-pixel offset when its pixels are not on whole multiples of the pixel
size). The tiles used are those that touch the area, and the output is their union cropped to the area
on the token grid. The same place is therefore cut the same way, and gets the same embedding, whatever
extent is asked; two runs over adjacent or overlapping extents give rasters on one grid that mosaic to
the pixel.

**Seams.** A ViT sees only its own tile, so neighbouring tiles disagree at their common edge. Three
ways to write them, with a margin of ``m`` tokens:

- ``none``: tiles side by side (step ``G``), each token from the one tile that holds it.
- ``crop``: tiles overlap by ``2m`` tokens (step ``(n - 2m)`` tokens) and only their central
  ``(n - 2m)²`` tokens are written: every written token sees at least ``m`` tokens of context.
- ``blend``: the same overlapping tiles, and every output token is the weighted mean of the tiles that
  cover it, with weights falling as a cosine ramp over the outer ``2m`` tokens of each tile. The ramps of
  two neighbours add up to one, so the result moves smoothly from one tile to the next: there is no hard
  step anywhere. ``4m <= n`` (only neighbours overlap).

Both overlapping ways cost about ``(n / (n - 2m))²`` times the tiles of ``none`` on large areas.

:func:`layout_for_area` is the older, area-anchored layout (tiles from the area's top-left corner,
whole tiles written); Earth Engine composites use it for their pixel blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from .errors import ThorInputError

Bounds = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax

SEAM_MODES = ("blend", "crop", "none")
DEFAULT_SEAMS = "blend"
DEFAULT_MARGIN = 3  # tokens; at n = 18: tiles overlap by 6 tokens (960 m) and advance by 12 (1920 m)
_EPS = 1e-9


@dataclass(frozen=True)
class Tile:
    index: int
    row: int  # 0-based within the layout
    col: int
    bounds: Bounds  # xmin, ymin, xmax, ymax in the layout's CRS: the imagery the tile reads


@dataclass(frozen=True)
class TileLayout:
    """Tiles on a grid of tile steps from an anchor, and the output token raster they are written into.

    Tile ``(row, col)`` of the layout is grid tile ``(row0 + row, col0 + col)``; the output raster's
    top-left token is grid token ``(out_row0, out_col0)``, ``width x height`` tokens.
    """

    crs: str  # WKT or "EPSG:nnnn", metric
    anchor_x: float  # the grid's anchor: top-left corner of grid tile (0, 0)'s written part
    anchor_y: float
    tile_size_m: float  # G
    image_size: int  # pixels per tile side at scale_m
    grid_side: int  # tokens per tile side (n)
    col0: int
    row0: int
    tiles_x: int
    tiles_y: int
    out_col0: int  # grid token of the output's top-left corner
    out_row0: int
    width: int  # output tokens
    height: int
    area: Bounds  # the requested area, for the record
    margin: int = 0  # tokens
    seams: str = "none"

    @property
    def scale_m(self) -> float:
        return self.tile_size_m / self.image_size

    @property
    def n_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def core(self) -> int:
        """Tokens between the starts of neighbouring tiles (n - 2 * margin)."""
        return self.grid_side - 2 * self.margin

    @property
    def blend_margin(self) -> int:
        """Tokens a tile's written part reaches past its core on each side (``margin`` when blending)."""
        return self.margin if self.seams == "blend" else 0

    @property
    def step_m(self) -> float:
        """Distance between the origins of neighbouring tiles."""
        return self.core * self.output_pixel_size()

    @property
    def origin_x(self) -> float:
        """Top-left corner of the output raster."""
        return self.anchor_x + self.out_col0 * self.output_pixel_size()

    @property
    def origin_y(self) -> float:
        return self.anchor_y - self.out_row0 * self.output_pixel_size()

    def tiles(self) -> Iterator[Tile]:
        """Tiles in row-major order; ``bounds`` is the imagery a tile reads (margin included)."""
        for i in range(self.n_tiles):
            yield self.tile(i)

    def tile(self, index: int) -> Tile:
        """Tile number ``index`` of :meth:`tiles` (row-major)."""
        if not 0 <= index < self.n_tiles:
            raise IndexError(f"tile {index} of a layout of {self.n_tiles}")
        r, c = divmod(int(index), self.tiles_x)
        g, step = self.tile_size_m, self.step_m
        pad = self.margin * self.output_pixel_size()
        x0 = self.anchor_x + (self.col0 + c) * step - pad
        y1 = self.anchor_y - (self.row0 + r) * step + pad
        return Tile(int(index), r, c, (x0, y1 - g, x0 + g, y1))

    def written(self, grid):
        """The part of a tile's [..., n, n] token grid that goes into the output (its centre when cropping)."""
        k = self.margin - self.blend_margin
        return grid if k == 0 else grid[..., k:self.grid_side - k, k:self.grid_side - k]

    def weights(self) -> np.ndarray:
        """[k, k] float32 weights of the written part: ones, or the blending ramps."""
        return tile_weights(self.grid_side, self.margin) if self.seams == "blend" and self.margin else \
            np.ones((self.core, self.core), np.float32)

    # The output token raster ---------------------------------------------------------------
    def output_pixel_size(self) -> float:
        return self.tile_size_m / self.grid_side

    def output_geotransform(self) -> Tuple[float, float, float, float, float, float]:
        px = self.output_pixel_size()
        return (self.origin_x, px, 0.0, self.origin_y, 0.0, -px)

    def output_size(self) -> Tuple[int, int]:
        """(width, height) of the output token raster in pixels."""
        return self.width, self.height

    def output_window(self, tile: Tile) -> Tuple[int, int, int, int]:
        """(xoff, yoff, width, height) of the tile's written tokens in the output raster (it may reach past
        the raster's edges, which cut it)."""
        k, e = self.core, self.blend_margin
        return ((self.col0 + tile.col) * k - e - self.out_col0, (self.row0 + tile.row) * k - e - self.out_row0,
                k + 2 * e, k + 2 * e)

    def rows_final_after(self, row: int) -> int:
        """Output rows above this one are complete once the tiles of layout rows 0..``row`` are written."""
        if row >= self.tiles_y - 1:
            return self.height
        nxt = (self.row0 + row + 1) * self.core - self.blend_margin - self.out_row0
        return max(0, min(self.height, nxt))

    # The imagery grid at scale_m -----------------------------------------------------------
    def pixel_geotransform(self, tile: Tile) -> Tuple[float, float, float, float, float, float]:
        """Geotransform of the tile's ``image_size x image_size`` imagery at ``scale_m``."""
        s = self.scale_m
        return (tile.bounds[0], s, 0.0, tile.bounds[3], 0.0, -s)

    def record(self) -> dict:
        """What the output's metadata says about its layout."""
        return dict(tiles_x=self.tiles_x, tiles_y=self.tiles_y, tile_size_m=self.tile_size_m,
                    pixel_size_m=self.output_pixel_size(), seams=self.seams, context_margin_tokens=self.margin,
                    tile_step_m=self.step_m, anchor=[self.anchor_x, self.anchor_y],
                    first_tile=[self.col0, self.row0], area=list(self.area),
                    origin=[self.origin_x, self.origin_y])


def tile_weights(grid_side: int, margin: int) -> np.ndarray:
    """[n, n] blending weights: 1 in the middle, a cosine ramp over the outer ``2 * margin`` tokens.

    Along one axis ``w(k) = sin²(π/2 · (k + ½) / 2m)`` for the first ``2m`` tokens (mirrored at the other
    end): where two neighbours overlap (``2m`` tokens) their weights add up to exactly one."""
    n, m = int(grid_side), int(margin)
    w = np.ones(n, np.float64)
    if m > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(2 * m) + 0.5) / (2 * m)) ** 2
        w[:2 * m] = ramp
        w[n - 2 * m:] = ramp[::-1]
    return np.outer(w, w).astype(np.float32)


def check_seams(seams: str) -> str:
    s = str(seams).strip().lower()
    if s not in SEAM_MODES:
        raise ThorInputError(f"the seam handling must be one of {', '.join(SEAM_MODES)}, got {seams!r}")
    return s


def check_margin(margin: int, grid_side: int, image_size: int, seams: str = "crop") -> int:
    """A margin leaves a centre (crop) or overlaps only neighbours (blend), and shifts tiles by whole
    pixels (so they stay on the pixel grid). ``none`` ignores it (0)."""
    seams = check_seams(seams)
    if seams == "none":
        return 0
    margin, n = int(margin), int(grid_side)
    if seams == "blend":
        if margin < 0 or 4 * margin > n:
            raise ThorInputError(
                f"for blending, the margin must be 0 to {n // 4} tokens for a {n} x {n} token grid (tiles "
                f"overlap by twice the margin, and only neighbours may overlap), got {margin}")
    elif margin < 0 or 2 * margin >= n:
        raise ThorInputError(
            f"the context margin must be 0 to {(n - 1) // 2} tokens for a {n} x {n} token grid, got {margin}")
    if (margin * int(image_size)) % n:
        step = n // math.gcd(n, int(image_size))
        raise ThorInputError(
            f"a context margin of {margin} tokens is {margin * image_size / n:g} pixels, which would put tiles "
            f"off the pixel grid: use a multiple of {step}")
    return margin


def fit_margin(margin: int, grid_side: int, image_size: int, seams: str = DEFAULT_SEAMS) -> int:
    """``margin``; or, when it is the default (DEFAULT_MARGIN) and too large for this token grid (a small image
    size, a large patch size), the largest margin that fits. A margin the user chose is checked, not changed."""
    if int(margin) != DEFAULT_MARGIN:
        return int(margin)
    for m in range(DEFAULT_MARGIN, -1, -1):
        try:
            return check_margin(m, grid_side, image_size, seams)
        except ThorInputError:
            continue
    return 0


def _check_bounds(bounds: Bounds) -> Bounds:
    xmin, ymin, xmax, ymax = (float(b) for b in bounds)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise ThorInputError(f"the area's bounds are not finite numbers: {bounds}")
    if xmax <= xmin or ymax <= ymin:
        raise ThorInputError(
            f"the area is empty or inverted (xmin={xmin}, xmax={xmax}, ymin={ymin}, ymax={ymax}): "
            "give an extent with xmax > xmin and ymax > ymin")
    return xmin, ymin, xmax, ymax


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def global_layout(bounds: Bounds, crs: str, scale_m: float, image_size: int, grid_side: int,
                  seams: str = DEFAULT_SEAMS, margin: int = DEFAULT_MARGIN,
                  anchor: Tuple[float, float] = (0.0, 0.0)) -> TileLayout:
    """The tiles of the global grid (anchored at ``anchor``, the CRS origin by default) that ``bounds``
    needs, and the output cropped to ``bounds`` on the token grid (see the module's docstring)."""
    seams = check_seams(seams)
    margin = check_margin(fit_margin(margin, grid_side, image_size, seams), grid_side, image_size, seams)
    xmin, ymin, xmax, ymax = _check_bounds(bounds)
    n = int(grid_side)
    g = float(scale_m) * int(image_size)
    px = g / n
    ax, ay = float(anchor[0]), float(anchor[1])
    # the output: token cells touching the area
    c0 = math.floor((xmin - ax) / px + _EPS)
    c1 = max(c0 + 1, math.ceil((xmax - ax) / px - _EPS))
    r0 = math.floor((ay - ymax) / px + _EPS)
    r1 = max(r0 + 1, math.ceil((ay - ymin) / px - _EPS))
    # the tiles whose written part touches the output: [I*k - e, I*k + k + e) meets [c0, c1)
    k = n - 2 * margin
    e = margin if seams == "blend" else 0
    i0, i1 = (c0 - e) // k, _ceil_div(c1 + e, k) - 1
    j0, j1 = (r0 - e) // k, _ceil_div(r1 + e, k) - 1
    return TileLayout(crs=crs, anchor_x=ax, anchor_y=ay, tile_size_m=g, image_size=int(image_size), grid_side=n,
                      col0=i0, row0=j0, tiles_x=i1 - i0 + 1, tiles_y=j1 - j0 + 1, out_col0=c0, out_row0=r0,
                      width=c1 - c0, height=r1 - r0, area=(xmin, ymin, xmax, ymax), margin=margin, seams=seams)


def pixel_anchor(x: float, y: float, scale_m: float) -> Tuple[float, float]:
    """The global grid's anchor for imagery whose pixel corner is (x, y): the CRS origin, moved by less than a
    pixel when the imagery's pixels are not on whole multiples of ``scale_m`` (so tiles stay on its pixels)."""
    def phase(v: float) -> float:
        p = v - math.floor(v / scale_m) * scale_m
        return 0.0 if p < 1e-6 * scale_m or scale_m - p < 1e-6 * scale_m else p
    return phase(float(x)), phase(float(y))


def layout_for_area(bounds: Bounds, crs: str, scale_m: float, image_size: int, grid_side: int,
                    snap_to: float = 0.0, margin: int = 0) -> TileLayout:
    """Cut ``bounds`` (in the metric ``crs``) into tiles of ``scale_m * image_size`` metres from its top-left
    corner, whole tiles written (the output may reach past the right and bottom edges).

    ``snap_to`` > 0 moves the top-left corner onto a multiple of that many metres (outwards), so that
    tile pixels line up with a source raster's pixel grid or a fixed UTM grid. ``margin`` (tokens) makes
    tiles overlap and keeps each tile's centre (``crop``).
    """
    margin = check_margin(margin, grid_side, image_size)
    xmin, ymin, xmax, ymax = _check_bounds(bounds)
    if snap_to > 0:
        xmin = math.floor(xmin / snap_to + 1e-9) * snap_to
        ymax = math.ceil(ymax / snap_to - 1e-9) * snap_to
    g = float(scale_m) * int(image_size)
    k = int(grid_side) - 2 * margin
    step = g * k / int(grid_side)
    # a tiny tolerance so an area of exactly k tiles is not rounded up to k + 1
    tx = max(1, math.ceil((xmax - xmin) / step - 1e-9))
    ty = max(1, math.ceil((ymax - ymin) / step - 1e-9))
    return TileLayout(crs=crs, anchor_x=xmin, anchor_y=ymax, tile_size_m=g, image_size=int(image_size),
                      grid_side=int(grid_side), col0=0, row0=0, tiles_x=tx, tiles_y=ty, out_col0=0, out_row0=0,
                      width=tx * k, height=ty * k,
                      area=(float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3])),
                      margin=margin, seams="crop" if margin else "none")


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
