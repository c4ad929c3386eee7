"""A local Sentinel-2 raster as THOR's imagery source.

The raster is read at native pixels when it is a north-up raster in a metric CRS at the sensor's scale
(10 m): tiles then sit on its pixel grid and nothing is resampled. Any other raster (another
resolution, a geographic CRS such as EPSG:4326, a rotated grid) is first warped, virtually and lazily,
to a ``scale_m`` grid in its own CRS when that is metric, otherwise in the local UTM zone. Web Mercator
(EPSG:3857) counts as not metric: its "metres" shrink with latitude, so it is warped to UTM too.
Reads are windowed: memory does not grow with the raster or the area.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import gdal_io
from .errors import ThorInputError
from .specs import S2_BANDS
from .tiling import DEFAULT_MARGIN, DEFAULT_SEAMS, Bounds, Tile, TileLayout, global_layout, pixel_anchor, utm_epsg

# Common Sentinel-2 stacks and where THOR's ten bands sit in them (1-based).
KNOWN_BAND_MAPS = {
    10: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),  # B2 B3 B4 B5 B6 B7 B8 B8A B11 B12
    12: (2, 3, 4, 5, 6, 7, 8, 9, 11, 12),  # B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12 (L2A)
    13: (2, 3, 4, 5, 6, 7, 8, 9, 12, 13),  # B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B10 B11 B12 (L1C)
}


def parse_band_map(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``"2,3,4,5,6,7,8,9,11,12"`` → (2, 3, ...); empty → None (use the raster's own order)."""
    if text is None or not str(text).strip():
        return None
    try:
        values = tuple(int(v) for v in str(text).replace(";", ",").replace(" ", ",").split(",") if v.strip())
    except ValueError:
        raise ThorInputError(
            f"band mapping {text!r} must be 10 comma-separated band numbers (1-based) for "
            + " ".join(S2_BANDS)) from None
    return values


def check_band_map(band_count: int, band_map: Optional[Sequence[int]]) -> Tuple[int, ...]:
    want = " ".join(S2_BANDS)
    if band_map is None:
        if band_count == 10:
            return KNOWN_BAND_MAPS[10]
        hint = ""
        if band_count in KNOWN_BAND_MAPS:
            hint = (f" For a {band_count}-band Sentinel-2 stack in band-number order the mapping is "
                    + ",".join(map(str, KNOWN_BAND_MAPS[band_count])) + ".")
        raise ThorInputError(
            f"the raster has {band_count} band(s); THOR needs 10 ({want}). Give a band mapping that picks "
            f"them, as 10 comma-separated band numbers.{hint}")
    band_map = tuple(int(b) for b in band_map)
    if len(band_map) != 10:
        raise ThorInputError(f"the band mapping has {len(band_map)} entries; it needs 10, one for each of {want}")
    bad = [b for b in band_map if not 1 <= b <= band_count]
    if bad:
        raise ThorInputError(
            f"band mapping entries {bad} are out of range: the raster has bands 1 to {band_count}")
    return band_map


def transform_bounds(bounds: Bounds, src_crs: str, dst_crs: str, densify: int = 21) -> Bounds:
    """Bounds of ``bounds`` (in ``src_crs``) in ``dst_crs``, with densified edges."""
    osr = gdal_io.osr()
    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.SetFromUserInput(src_crs)
    d.SetFromUserInput(dst_crs)
    if s.IsSame(d):
        return tuple(float(v) for v in bounds)
    for srs in (s, d):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(s, d)
    xmin, ymin, xmax, ymax = bounds
    pts = []
    for t in np.linspace(0.0, 1.0, densify):
        x = xmin + (xmax - xmin) * t
        y = ymin + (ymax - ymin) * t
        pts += [(x, ymin), (x, ymax), (xmin, y), (xmax, y)]
    out = np.array([ct.TransformPoint(float(px), float(py))[:2] for px, py in pts])
    if not np.all(np.isfinite(out)):
        raise ThorInputError(f"the extent {bounds} cannot be transformed to the raster's working CRS")
    return float(out[:, 0].min()), float(out[:, 1].min()), float(out[:, 0].max()), float(out[:, 1].max())


def warped_grid_bounds(bounds: Bounds, src_crs: str, dst_crs: str, scale_m: float) -> Bounds:
    """The ``scale_m`` grid (origin on multiples of ``scale_m``) that covers ``bounds`` of ``src_crs`` once
    transformed to ``dst_crs``: what GDAL's ``targetAlignedPixels`` asks for, computed here from densified
    edges, because GDAL's own suggested warp extent differs between versions (3.10 moved the origin of a
    geographic input by one pixel compared with 3.6)."""
    xmin, ymin, xmax, ymax = transform_bounds(bounds, src_crs, dst_crs)
    s = float(scale_m)
    eps = 1e-6  # a coordinate within a micro-pixel of a grid line is on it
    return (math.floor(xmin / s + eps) * s, math.floor(ymin / s + eps) * s,
            math.ceil(xmax / s - eps) * s, math.ceil(ymax / s - eps) * s)


def lonlat_of(x: float, y: float, crs: str) -> Tuple[float, float]:
    osr = gdal_io.osr()
    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.SetFromUserInput(crs)
    d.ImportFromEPSG(4326)
    for srs in (s, d):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lon, lat = osr.CoordinateTransformation(s, d).TransformPoint(float(x), float(y))[:2]
    return lon, lat


class RasterSource:
    """Windows of THOR's ten bands from a local raster, on a ``scale_m`` metric grid."""

    def __init__(self, path: str, band_map: Optional[Sequence[int]] = None, dn_offset: Optional[float] = None,
                 scale_m: float = 10.0, fill_value: float = 0.0,
                 log: Optional[Callable[[str], None]] = None):
        self.path = str(path)
        self.scale_m = float(scale_m)
        self.fill_value = float(fill_value)
        # None: the offset the raster's metadata states, else 0; a number (0 included) is used as it is
        self._offset_given = dn_offset is not None
        self.dn_offset = float(dn_offset) if self._offset_given else 0.0
        if not math.isfinite(self.dn_offset) or not math.isfinite(self.fill_value) and not math.isnan(
                self.fill_value):
            raise ThorInputError(f"the offset added to the pixel values must be a finite number, got {dn_offset!r}"
                                 if not math.isfinite(self.dn_offset) else
                                 f"the fill value must be a finite number or NaN, got {fill_value!r}")
        self._log = log or (lambda _m: None)
        src = gdal_io.open_raster(self.path)
        self._src = src
        info = gdal_io.raster_info(src)
        self.source_info = info
        self.band_map = check_band_map(info.band_count, band_map)
        gdal_io.check_readable(src, self.band_map, self.path)
        if not info.crs_wkt:
            raise ThorInputError(f"the raster {self.path} has no coordinate reference system")
        px, py = info.pixel_size
        true_metres = info.is_metric() and not gdal_io.crs_is_mercator(info.crs_wkt)
        native = (info.is_north_up and true_metres
                  and abs(px - self.scale_m) <= 1e-6 * self.scale_m and abs(py - self.scale_m) <= 1e-6 * self.scale_m)
        if native:
            self.crs = info.crs_wkt
            self.ds = src
            self.resampled = False
        else:
            if true_metres:
                self.crs = info.crs_wkt
            else:
                b = info.bounds
                lon, lat = lonlat_of((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, info.crs_wkt)
                self.crs = gdal_io.crs_to_wkt(f"EPSG:{utm_epsg(lon, lat)}")
            self.ds = self._warp(src)
            self.resampled = True
            self._log(f"The raster is not a {self.scale_m:g} m grid in a metric CRS: it is warped (bilinear) "
                      f"to {self.scale_m:g} m in {_crs_name(self.crs)} on the fly.")
        self.info = gdal_io.raster_info(self.ds)
        self.nodata = [self.ds.GetRasterBand(b).GetNoDataValue() for b in self.band_map]
        self._check_offset(src)

    def _check_offset(self, src) -> None:
        """Sentinel-2 L2A of processing baseline 04.00 or later stores reflectance x 10000 + 1000. With no
        offset given, one the raster's metadata states (BOA_ADD_OFFSET) is used; an offset given (0 included)
        wins over the metadata, which is then only mentioned. With none given or 0, a raster whose valid values
        are all >= 1000 in every band and no offset in its metadata gets a warning naming the fix."""
        if self.dn_offset != 0:
            return
        found = metadata_offset(src, self.band_map)
        if found is not None:
            value, where = found
            if self._offset_given:
                if value != 0:
                    self._log(f"The raster's metadata states the offset {value:g} ({where}); it is not applied: "
                              "the offset parameter is 0. Leave the offset not set to use the metadata's.")
                return
            self.dn_offset = value
            self._log(f"Using the offset {value:g} stated in the raster's metadata ({where}), as for Sentinel-2 "
                      "L2A of processing baseline 04.00 or later; set the offset parameter to override it (0: "
                      "no offset).")
            return
        minima = band_minima(src, self.band_map)
        if minima and all(m is not None and m >= 1000 for m in minima):
            self._log(f"WARNING: every band's valid values are at least 1000 (smallest minimum {min(minima):g}): "
                      "this looks like Sentinel-2 L2A of processing baseline 04.00 or later, stored as "
                      "reflectance x 10000 + 1000. Without DN_OFFSET=-1000 (the 'Offset added to the pixel "
                      "values' parameter) its embeddings are wrong.")

    def _warp(self, src):
        g = gdal_io.gdal()
        nodata = src.GetRasterBand(1).GetNoDataValue()
        kw = dict(format="VRT", dstSRS=self.crs, xRes=self.scale_m, yRes=self.scale_m,
                  outputBounds=warped_grid_bounds(self.source_info.bounds, self.source_info.crs_wkt, self.crs,
                                                  self.scale_m),
                  resampleAlg="bilinear", outputType=g.GDT_Float32, dstNodata=nodata if nodata is not None else np.nan)
        return g.Warp("", src, options=g.WarpOptions(**kw))

    # --- areas ---------------------------------------------------------------------------
    @property
    def bounds(self) -> Bounds:
        return self.info.bounds

    def area(self, extent: Optional[Bounds] = None, extent_crs: Optional[str] = None) -> Bounds:
        """The area to embed in the working CRS: the raster's own, or ``extent`` (in ``extent_crs``)."""
        if extent is None:
            return self.bounds
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
        if not (xmax > xmin and ymax > ymin):
            raise ThorInputError(
                f"the extent is empty or inverted (xmin={xmin}, xmax={xmax}, ymin={ymin}, ymax={ymax})")
        b = transform_bounds((xmin, ymin, xmax, ymax), extent_crs or self.source_info.crs_wkt, self.crs)
        r = self.bounds
        if b[0] >= r[2] or b[2] <= r[0] or b[1] >= r[3] or b[3] <= r[1]:
            raise ThorInputError(
                f"the extent ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the raster "
                f"{self.path}, whose extent is ({self.source_info.bounds[0]:g}, {self.source_info.bounds[1]:g}, "
                f"{self.source_info.bounds[2]:g}, {self.source_info.bounds[3]:g})")
        return b

    def layout(self, area: Bounds, image_size: int, grid_side: int, margin: int = DEFAULT_MARGIN,
               seams: str = DEFAULT_SEAMS) -> TileLayout:
        """The tiles of the global grid that ``area`` needs (see :func:`.tiling.global_layout`): anchored at
        the CRS origin, moved by the raster's sub-pixel offset if its pixels are not on whole multiples of
        the pixel size, so tiles read whole pixels and the same place is always cut the same way."""
        gt = self.info.geotransform
        return global_layout(area, self.crs, self.scale_m, image_size, grid_side, seams=seams, margin=margin,
                             anchor=pixel_anchor(gt[0], gt[3], self.scale_m))

    # --- pixels --------------------------------------------------------------------------
    def _offsets(self, x0: float, y1: float) -> Tuple[int, int]:
        gt = self.info.geotransform
        return int(round((x0 - gt[0]) / gt[1])), int(round((gt[3] - y1) / -gt[5]))

    def _clean(self, arr: np.ndarray) -> Tuple[np.ndarray, float]:
        """Nodata → fill, DN offset applied to valid pixels; returns the array and its valid fraction."""
        valid = np.isfinite(arr)
        for i, nd in enumerate(self.nodata):
            if nd is not None and not math.isnan(nd):
                valid[i] &= arr[i] != nd
        valid_px = valid.all(axis=0)
        out = np.where(valid_px[None], arr + self.dn_offset, self.fill_value).astype(np.float32)
        return out, float(valid_px.mean()) if valid_px.size else 0.0

    def read_box(self, bounds: Bounds, size: int) -> Tuple[np.ndarray, float]:
        """The ten bands over ``bounds`` (working CRS) as [10, size, size] at ``scale_m`` when the box is
        ``size * scale_m`` wide, else at the box's own pixels (resized later by the model's input step).
        Pixels outside the raster are the fill value. Returns the array and the valid fraction."""
        x0, y0, x1, y1 = bounds
        xoff, yoff = self._offsets(x0, y1)
        n = max(1, int(round((x1 - x0) / self.info.geotransform[1])))
        failure = None
        try:
            if n <= 2 * size:
                arr = gdal_io.read_window(self.ds, xoff, yoff, n, n, self.band_map, fill=np.nan)
            else:  # a very large box: let GDAL average it down instead of reading every pixel
                arr = self._read_decimated(xoff, yoff, n, size)
        except RuntimeError as e:
            failure = gdal_io.read_failure(e, self.path)
        if failure is not None:  # raised outside the handler (GDAL's traceback holds the dataset)
            raise failure
        self._drop_cached_blocks()
        return self._clean(arr)

    def _drop_cached_blocks(self) -> None:
        """Boxes are read once each: release GDAL's cached blocks so memory does not grow with the area."""
        self.ds.FlushCache()
        if self._src is not self.ds:
            self._src.FlushCache()

    def _read_decimated(self, xoff: int, yoff: int, n: int, size: int) -> np.ndarray:
        g = gdal_io.gdal()
        out = np.full((10, size, size), np.nan, dtype=np.float32)
        x0, y0 = max(0, xoff), max(0, yoff)
        x1, y1 = min(self.info.width, xoff + n), min(self.info.height, yoff + n)
        if x1 <= x0 or y1 <= y0:
            return out
        f = size / n
        ox0, oy0 = int(round((x0 - xoff) * f)), int(round((y0 - yoff) * f))
        ox1, oy1 = max(ox0 + 1, int(round((x1 - xoff) * f))), max(oy0 + 1, int(round((y1 - yoff) * f)))
        for i, b in enumerate(self.band_map):
            out[i, oy0:oy1, ox0:ox1] = self.ds.GetRasterBand(b).ReadAsArray(
                x0, y0, x1 - x0, y1 - y0, buf_xsize=ox1 - ox0, buf_ysize=oy1 - oy0,
                resample_alg=g.GRIORA_Average)
        return out

    def read_tile(self, layout: TileLayout, tile: Tile) -> Tuple[np.ndarray, float]:
        return self.read_box(tile.bounds, layout.image_size)

    def tiles(self, layout: TileLayout):
        """Yields (tile, [10, S, S] array, valid fraction) for every tile of ``layout``."""
        for tile in layout.tiles():
            arr, valid = self.read_tile(layout, tile)
            yield tile, arr, valid


_OFFSET_KEYS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")


def metadata_offset(ds, band_map: Sequence[int]) -> Optional[Tuple[float, str]]:
    """``(offset, where)`` when the raster's metadata states one additive offset for THOR's bands, as GDAL
    exposes Sentinel-2 L2A metadata (``BOA_ADD_OFFSET_B<n>`` or ``BOA_ADD_OFFSET`` items, on the dataset or
    on the bands); None otherwise (or when the bands disagree)."""
    found: List[float] = []
    where = ""
    dataset_md = {}
    for domain in (None, "IMAGERY"):
        try:
            dataset_md.update({k.upper(): v for k, v in (ds.GetMetadata(domain) if domain else ds.GetMetadata()
                                                         or {}).items()})
        except (RuntimeError, AttributeError):
            pass
    for pos, b in enumerate(band_map):
        s2 = S2_BANDS[pos] if pos < len(S2_BANDS) else ""
        band = ds.GetRasterBand(int(b))
        band_md = {k.upper(): v for k, v in (band.GetMetadata() or {}).items()}
        value = None
        candidates = []
        for key in _OFFSET_KEYS:
            candidates += [(band_md, key), (dataset_md, f"{key}_{s2}"), (dataset_md, key)]
        for md, key in candidates:
            if key in md:
                try:
                    value = float(md[key])
                except (TypeError, ValueError):
                    continue
                where = where or key
                break
        if value is None:
            return None
        found.append(value)
    if not found or max(found) != min(found) or found[0] == 0:
        return None
    return found[0], where


def band_minima(ds, band_map: Sequence[int], side: int = 256) -> List[Optional[float]]:
    """Each band's minimum over valid pixels (not nodata, finite), from a decimated read of the whole
    raster (at most ``side`` x ``side`` samples; nothing is written beside the file); None where no pixel
    is valid."""
    w, h = ds.RasterXSize, ds.RasterYSize
    bw, bh = min(w, side), min(h, side)
    out: List[Optional[float]] = []
    for b in band_map:
        band = ds.GetRasterBand(int(b))
        try:
            arr = band.ReadAsArray(0, 0, w, h, buf_xsize=bw, buf_ysize=bh).astype(np.float64)
        except RuntimeError:
            return []
        ok = np.isfinite(arr)
        nd = band.GetNoDataValue()
        if nd is not None and not math.isnan(nd):
            ok &= arr != nd
        out.append(float(arr[ok].min()) if ok.any() else None)
    ds.FlushCache()
    return out


def _crs_name(wkt: str) -> str:
    osr = gdal_io.osr()
    s = osr.SpatialReference()
    s.SetFromUserInput(wkt)
    code = s.GetAuthorityCode(None)
    return f"EPSG:{code}" if code else (s.GetName() or "its CRS")


def band_names() -> List[str]:
    return list(S2_BANDS)
