"""Small helpers shared by the tests: real GeoTIFFs from arrays."""
import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()


def write_raster(path, arr, geotransform, epsg=32632, nodata=None, dtype=gdal.GDT_Float32):
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    c, h, w = arr.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c, dtype)
    ds.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(c):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(arr[i])
    ds = None
    return str(path)


def read_raster(path):
    ds = gdal.Open(str(path))
    arr = ds.ReadAsArray()
    if arr.ndim == 2:
        arr = arr[None]
    return arr, ds.GetGeoTransform(), ds.GetProjection(), ds


def epsg_of(wkt):
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.AutoIdentifyEPSG()
    return int(srs.GetAuthorityCode(None))
