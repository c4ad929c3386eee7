"""Raster input and output with GDAL: windowed reads with fill padding, streamed GeoTIFF writes.

GDAL is imported where it is used (``osgeo.gdal``, the one QGIS itself links), so the rest of the engine
imports without it. Outputs are written under a temporary name next to the destination and renamed
only when complete: a failed or canceled run leaves no half-written file behind.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import output_files
from .errors import ThorInputError

GeoTransform = Tuple[float, float, float, float, float, float]

GTIFF_OPTIONS = ("TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=3",
                 "BIGTIFF=IF_SAFER", "INTERLEAVE=BAND")
CONFIG_KEY = "THOR_CONFIG"  # metadata item holding the run's resolved configuration (JSON)


def gdal():
    from osgeo import gdal as _gdal  # noqa: WPS433 (lazy on purpose)

    _gdal.UseExceptions()
    return _gdal


def osr():
    from osgeo import osr as _osr

    _osr.UseExceptions()
    return _osr


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    band_count: int
    geotransform: GeoTransform
    crs_wkt: str
    nodata: Tuple[Optional[float], ...]
    band_descriptions: Tuple[str, ...]

    @property
    def pixel_size(self) -> Tuple[float, float]:
        return abs(self.geotransform[1]), abs(self.geotransform[5])

    @property
    def is_north_up(self) -> bool:
        return self.geotransform[2] == 0 and self.geotransform[4] == 0 and self.geotransform[5] < 0

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        gt = self.geotransform
        x0, y0 = gt[0], gt[3]
        x1 = x0 + gt[1] * self.width
        y1 = y0 + gt[5] * self.height
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def is_metric(self) -> bool:
        return crs_is_metric(self.crs_wkt)


def crs_is_metric(crs_wkt: str) -> bool:
    """True for a projected CRS whose linear unit is the metre."""
    if not crs_wkt:
        return False
    srs = osr().SpatialReference()
    srs.SetFromUserInput(crs_wkt)
    return bool(srs.IsProjected()) and abs(srs.GetLinearUnits() - 1.0) < 1e-9


def crs_is_mercator(crs_wkt: str) -> bool:
    """True for (pseudo-)Mercator projections such as EPSG:3857, whose metres are true only at the
    equator (a "10 m" pixel is 10·cos(latitude) m on the ground). Transverse Mercator (UTM) is False."""
    if not crs_wkt:
        return False
    srs = osr().SpatialReference()
    srs.SetFromUserInput(crs_wkt)
    method = (srs.GetAttrValue("PROJECTION") or "").lower()
    return "mercator" in method and "transverse" not in method


def crs_to_wkt(crs: str) -> str:
    srs = osr().SpatialReference()
    srs.SetFromUserInput(crs)
    return srs.ExportToWkt()


def open_raster(path: str):
    g = gdal()
    try:
        ds = g.Open(os.fspath(path), g.GA_ReadOnly)
    except RuntimeError as e:
        raise ThorInputError(f"cannot open raster {path}: {e}") from None
    if ds is None:
        raise ThorInputError(f"cannot open raster {path}")
    return ds


def read_failure(exc: BaseException, path: str) -> ThorInputError:
    """A GDAL read error as one line naming the file and the likely cause."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ThorInputError(f"cannot read the raster {path}: it is truncated or damaged (GDAL: {detail}). "
                          "Copy or download it again")


def check_readable(ds, band_list: Sequence[int], path: str) -> None:
    """Read one pixel of each band's last block: a truncated file fails here, before any work is done."""
    failure = None
    try:
        for b in band_list:
            band = ds.GetRasterBand(int(b))
            bx, by = band.GetBlockSize()
            w, h = ds.RasterXSize, ds.RasterYSize
            x = ((w - 1) // max(1, bx)) * max(1, bx)
            y = ((h - 1) // max(1, by)) * max(1, by)
            band.ReadRaster(x, y, 1, 1)
            band.ReadRaster(w - 1, h - 1, 1, 1)
        ds.FlushCache()
    except RuntimeError as e:
        failure = read_failure(e, path)
    if failure is not None:
        raise failure


def raster_info(path_or_ds: Any) -> RasterInfo:
    ds = open_raster(path_or_ds) if isinstance(path_or_ds, (str, os.PathLike)) else path_or_ds
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    return RasterInfo(
        path=ds.GetDescription(),
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        band_count=ds.RasterCount,
        geotransform=tuple(ds.GetGeoTransform()),
        crs_wkt=ds.GetProjection() or "",
        nodata=tuple(b.GetNoDataValue() for b in bands),
        band_descriptions=tuple(b.GetDescription() for b in bands),
    )


def read_window(ds, xoff: int, yoff: int, width: int, height: int, band_list: Sequence[int],
                fill: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Read ``band_list`` (1-based) over a pixel window that may run past the raster; the part outside
    the raster is ``fill``. Returns [C, height, width]."""
    out = np.full((len(band_list), height, width), fill, dtype=dtype)
    x0, y0 = max(0, xoff), max(0, yoff)
    x1, y1 = min(ds.RasterXSize, xoff + width), min(ds.RasterYSize, yoff + height)
    if x1 <= x0 or y1 <= y0:
        return out
    for i, b in enumerate(band_list):
        band = ds.GetRasterBand(int(b))
        arr = band.ReadAsArray(x0, y0, x1 - x0, y1 - y0)
        out[i, y0 - yoff:y1 - yoff, x0 - xoff:x1 - xoff] = arr
    return out


class _quiet_gdal:
    """Close a dataset without GDAL printing its errors: with exceptions on, an error while closing (a full
    disk) cannot be raised and is printed as "Exception ignored"; it is collected in ``errors`` instead."""

    def __init__(self, g):
        self.g = g
        self.errors: List[str] = []

    def __enter__(self):
        import sys

        self._hook = sys.unraisablehook
        sys.unraisablehook = lambda u: self.errors.append(str(u.exc_value))
        self.g.PushErrorHandler("CPLQuietErrorHandler")
        return self

    def __exit__(self, *exc) -> None:
        import sys

        self.g.PopErrorHandler()
        sys.unraisablehook = self._hook


def _temp_sibling(path: str) -> str:
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{name}.{uuid.uuid4().hex[:8]}.partial.tif")


class GeoTiffWriter:
    """A GeoTIFF written in windows, then committed (renamed into place) or aborted (deleted).

    Use as a context manager: leaving the block with an exception aborts, otherwise it commits.
    ``strip_rows``: write strips of that many rows instead of tiles, for outputs written row band by row
    band (compressed tiles that are written in pieces would be recompressed and rewritten as GDAL's cache
    evicts them, growing the file).
    """

    def __init__(self, path: str, width: int, height: int, band_count: int, geotransform: GeoTransform,
                 crs_wkt: str, dtype: str = "float32", nodata: Optional[float] = None,
                 band_names: Optional[Sequence[str]] = None, metadata: Optional[Mapping[str, Any]] = None,
                 options: Sequence[str] = GTIFF_OPTIONS, strip_rows: Optional[int] = None):
        g = gdal()
        if width <= 0 or height <= 0 or band_count <= 0:
            raise ThorInputError(f"cannot write an empty raster ({width}x{height}, {band_count} bands)")
        self.path = os.path.abspath(os.fspath(path))
        if os.path.splitext(self.path)[1].lower() not in (".tif", ".tiff"):
            raise ThorInputError(
                f"outputs are written as GeoTIFF: give a file name ending in .tif, not {os.path.basename(self.path)}")
        output_files.check_output_path(self.path)
        # held for the writer's life (re-entrant: the algorithm running it may hold it already); stale
        # partial files of this output, left by a killed run, are swept when it is taken
        output_files.acquire(self.path)
        self._done = False
        self.ds = None
        self._tmp = _temp_sibling(self.path)
        failure = None
        try:
            self._create(g, width, height, band_count, geotransform, crs_wkt, dtype, nodata, band_names,
                         metadata, options, strip_rows)
        except RuntimeError as e:
            failure = output_files.gdal_failure(e, self.path, "creating")
        except BaseException:
            self.abort()
            raise
        if failure is not None:
            self.abort()
            raise failure

    def _create(self, g, width, height, band_count, geotransform, crs_wkt, dtype, nodata, band_names, metadata,
                options, strip_rows) -> None:
        gdt = {"float32": g.GDT_Float32, "uint8": g.GDT_Byte, "int16": g.GDT_Int16,
               "uint16": g.GDT_UInt16, "int32": g.GDT_Int32, "float64": g.GDT_Float64}[dtype]
        opts = list(options)
        if strip_rows:
            # written one band of rows at a time (a row of THOR tiles): strips that height are complete
            # once written, so a compressed block is never written twice, whatever GDAL's cache size
            opts = [o for o in opts if not o.startswith(("TILED", "BLOCKXSIZE", "BLOCKYSIZE"))] + [
                "TILED=NO", f"BLOCKYSIZE={int(strip_rows)}"]
        elif band_count > 16:
            # many bands, band-interleaved: a 256 x 256 tile across 768 bands is 192 MiB, which a reader of
            # one window must decode whole; 128 x 128 keeps that at 48 MiB
            opts = [o for o in opts if not o.startswith(("BLOCKXSIZE", "BLOCKYSIZE"))] + ["BLOCKXSIZE=128",
                                                                                            "BLOCKYSIZE=128"]
        if dtype not in ("float32", "float64"):
            opts = [o for o in opts if not o.startswith("PREDICTOR")] + ["PREDICTOR=2"]
        self.dtype = np.dtype(dtype)
        self.ds = g.GetDriverByName("GTiff").Create(self._tmp, int(width), int(height), int(band_count), gdt,
                                                     options=opts)
        self.ds.SetGeoTransform(tuple(float(v) for v in geotransform))
        if crs_wkt:
            self.ds.SetProjection(crs_wkt)
        for i in range(band_count):
            band = self.ds.GetRasterBand(i + 1)
            if nodata is not None:
                band.SetNoDataValue(float(nodata))
            if band_names is not None:
                band.SetDescription(str(band_names[i]))
        if metadata:
            self.set_metadata(metadata)

    @property
    def width(self) -> int:
        return self.ds.RasterXSize

    @property
    def height(self) -> int:
        return self.ds.RasterYSize

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        for k, v in metadata.items():
            self.ds.SetMetadataItem(str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True))

    def write(self, arr: np.ndarray, xoff: int, yoff: int) -> None:
        """Write [C, h, w] at (xoff, yoff); the part outside the raster is clipped off."""
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[None]
        c, h, w = arr.shape
        if c != self.ds.RasterCount:
            raise ThorInputError(f"block has {c} bands, raster has {self.ds.RasterCount}")
        x0, y0 = max(0, xoff), max(0, yoff)
        x1, y1 = min(self.width, xoff + w), min(self.height, yoff + h)
        if x1 <= x0 or y1 <= y0:
            return
        block = np.ascontiguousarray(arr[:, y0 - yoff:y1 - yoff, x0 - xoff:x1 - xoff], dtype=self.dtype)
        failure = None
        try:
            self.ds.WriteRaster(x0, y0, x1 - x0, y1 - y0, block.tobytes(),
                                buf_type=self.ds.GetRasterBand(1).DataType,
                                band_list=list(range(1, c + 1)))
        except RuntimeError as e:
            failure = output_files.gdal_failure(e, self.path)
        if failure is not None:  # raised outside the handler: GDAL's traceback would keep the dataset open
            raise failure

    def flush(self) -> None:
        """Write cached blocks to the file and release them."""
        failure = None
        try:
            self.ds.FlushCache()
        except RuntimeError as e:
            failure = output_files.gdal_failure(e, self.path)
        if failure is not None:
            raise failure

    def commit(self) -> str:
        """Finish the file and rename it into place; on any failure the partial file is removed."""
        if self._done:
            return self.path
        failure = None
        try:
            self._finish()
        except (RuntimeError, OSError) as e:
            failure = output_files.gdal_failure(e, self.path)
        except BaseException:
            self.abort()
            raise
        if failure is not None:
            self.abort()
            raise failure
        self._done = True
        output_files.release(self.path)
        return self.path

    def _finish(self) -> None:
        size = (self.ds.RasterXSize, self.ds.RasterYSize, self.ds.RasterCount)
        self.ds.FlushCache()
        g = gdal()
        g.ErrorReset()
        with _quiet_gdal(g) as quiet:
            self.ds = None  # closing writes the last blocks and the directory; GDAL cannot raise here
        err = "; ".join(quiet.errors) or (g.GetLastErrorMsg() if g.GetLastErrorType() >= g.CE_Failure else "")
        check = None
        try:
            check = g.Open(self._tmp)
            ok = (check.RasterXSize, check.RasterYSize, check.RasterCount) == size
        except RuntimeError as e:
            ok, err = False, err or str(e)
        finally:
            check = None
        if not ok or err:
            raise RuntimeError(err or "the finished file cannot be read back")
        os.replace(self._tmp, self.path)
        if os.path.exists(self._tmp + ".aux.xml"):  # anything GDAL kept beside the file goes along
            os.replace(self._tmp + ".aux.xml", self.path + ".aux.xml")

    def abort(self) -> None:
        if self._done:
            return
        g = gdal()
        with _quiet_gdal(g):
            self.ds = None
        output_files.remove_quietly([self._tmp, self._tmp + ".aux.xml"])
        self._done = True
        output_files.release(self.path)

    def __enter__(self) -> "GeoTiffWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def read_metadata_config(path: str) -> Dict[str, Any]:
    """The run configuration stored in a GeoTIFF written by this plugin ({} if none)."""
    ds = open_raster(path)
    raw = ds.GetMetadataItem(CONFIG_KEY)
    return json.loads(raw) if raw else {}


def warped_vrt(ds, dst_crs_wkt: str, res: float, bounds: Optional[Tuple[float, float, float, float]] = None,
               resample: str = "bilinear", nodata: Optional[float] = None):
    """A virtual (streamed, never materialised) warp of ``ds`` to ``dst_crs_wkt`` at ``res`` metres."""
    g = gdal()
    kw: Dict[str, Any] = dict(format="VRT", dstSRS=dst_crs_wkt, xRes=res, yRes=res, resampleAlg=resample,
                              multithread=False)
    if bounds is not None:
        kw["outputBounds"] = bounds
    if nodata is not None:
        kw["dstNodata"] = nodata
    return g.Warp("", ds, options=g.WarpOptions(**kw))


def list_band_names(count: int, prefix: str = "thor_") -> List[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]
