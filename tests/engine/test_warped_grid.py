"""The grid of a warped input is computed by the engine, not left to GDAL: GDAL 3.6 and 3.10 suggest warped
extents one pixel apart (a geographic input's origin moved 10 m on GDAL 3.10), and the grid of the output
must not depend on the GDAL version."""
import math

import numpy as np
from osgeo import gdal, osr

from tests.helpers import write_raster
from thor_qgis.raster_source import RasterSource, warped_grid_bounds


def _footprint_in(epsg_from, epsg_to, bounds, n=1001):
    """Bounds of the densely sampled outline of ``bounds`` (an independent, much denser sampling)."""
    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.ImportFromEPSG(epsg_from)
    d.ImportFromEPSG(epsg_to)
    for r in (s, d):
        r.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(s, d)
    x0, y0, x1, y1 = bounds
    pts = []
    for t in np.linspace(0, 1, n):
        x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        pts += [ct.TransformPoint(x, y0)[:2], ct.TransformPoint(x, y1)[:2], ct.TransformPoint(x0, y)[:2],
                ct.TransformPoint(x1, y)[:2]]
    a = np.array(pts)
    return a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max()


def _grid_of(path):
    src = RasterSource(path)
    gt = src.ds.GetGeoTransform()
    out = (gt, src.ds.RasterXSize, src.ds.RasterYSize, src.resampled)
    del src
    return out


def test_geographic_input_is_warped_to_the_10m_grid_covering_its_footprint(tmp_path):
    data = np.random.default_rng(1).uniform(100, 3000, (10, 120, 150)).astype(np.float32)
    path = write_raster(tmp_path / "geo.tif", data, (9.48, 0.0002, 0.0, 45.51, 0.0, -0.0002), epsg=4326)
    (x0, dx, _, y1, _, dy), w, h, resampled = _grid_of(path)
    assert resampled and dx == 10.0 and dy == -10.0
    fx0, fy0, fx1, fy1 = _footprint_in(4326, 32632, (9.48, 45.486, 9.51, 45.51))
    # the smallest 10 m grid, on multiples of 10 m, that holds the whole footprint
    assert x0 == math.floor(fx0 / 10) * 10 and y1 == math.ceil(fy1 / 10) * 10
    assert (w, h) == (math.ceil(fx1 / 10) - math.floor(fx0 / 10), math.ceil(fy1 / 10) - math.floor(fy0 / 10))


def test_a_grid_already_on_the_pixel_lines_gets_no_extra_pixel():
    # a metric raster at 20 m whose edges are on the 10 m grid: exactly its own extent
    wkt = osr.SpatialReference()
    wkt.ImportFromEPSG(32632)
    b = warped_grid_bounds((500000.0, 4000000.0, 502880.0, 4002880.0), wkt.ExportToWkt(), wkt.ExportToWkt(), 10.0)
    assert b == (500000.0, 4000000.0, 502880.0, 4002880.0)
    b = warped_grid_bounds((500003.0, 3999999.0, 502880.000001, 4002871.0), wkt.ExportToWkt(), wkt.ExportToWkt(),
                           10.0)
    assert b == (500000.0, 3999990.0, 502880.0, 4002880.0)


def test_warp_does_not_depend_on_gdal_defaults(tmp_path):
    """GDAL's own choice for the same request (targetAlignedPixels, no bounds) is reported, not relied on:
    whatever it is on this GDAL version, the engine's grid is the one computed above."""
    data = np.random.default_rng(2).uniform(100, 3000, (10, 200, 200)).astype(np.float32)
    path = write_raster(tmp_path / "wm.tif", data, (1057500.0, 10.0, 0.0, 5702000.0, 0.0, -10.0), epsg=3857)
    (x0, _, _, y1, _, _), w, h, resampled = _grid_of(path)
    assert resampled
    fx0, fy0, fx1, fy1 = _footprint_in(3857, 32632, (1057500.0, 5700000.0, 1059500.0, 5702000.0))
    assert (x0, y1) == (math.floor(fx0 / 10) * 10, math.ceil(fy1 / 10) * 10)
    assert (w, h) == (math.ceil(fx1 / 10) - math.floor(fx0 / 10), math.ceil(fy1 / 10) - math.floor(fy0 / 10))
    d = osr.SpatialReference()
    d.ImportFromEPSG(32632)
    ds = gdal.Warp("", path, options=gdal.WarpOptions(format="VRT", dstSRS=d.ExportToWkt(), xRes=10, yRes=10,
                                                      targetAlignedPixels=True))
    gdal_default = (ds.GetGeoTransform()[0], ds.GetGeoTransform()[3], ds.RasterXSize, ds.RasterYSize)
    del ds
    print(f"GDAL {gdal.__version__} default warp grid {gdal_default}, engine's {(x0, y1, w, h)}")
