"""Small helpers shared by the tests: real GeoTIFFs from arrays, and Processing models that embed imagery."""
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


def model_output_parameter(model, child_id, output_name):
    """The name of the model's destination parameter for ``output_name`` of child ``child_id``.

    QGIS 3.22 names it ``child:output``; later versions name it differently (3.40: just the output's
    name), so it is found through the parameter's metadata where QGIS records the child and output."""
    defs = model.destinationParameterDefinitions()
    for d in defs:
        md = d.metadata() or {}
        if md.get("_modelChildId") == child_id and md.get("_modelChildOutputName") == output_name:
            return d.name()
    for d in defs:  # QGIS versions that record no metadata use the constructed name
        if d.name() == f"{child_id}:{output_name}":
            return d.name()
    raise AssertionError(f"the model has no destination for {child_id}/{output_name}: "
                         f"{[(d.name(), d.metadata()) for d in defs]}")


def grid_then_model(name, grid_values, alg_id, child_id, output, values=None, inputs=None):
    """A model that embeds its raster parameter ``s2`` with thor:grid_from_raster (child ``grid``, its
    parameters ``grid_values``) and feeds the grid to ``alg_id`` as child ``child_id``, with parameters
    ``values`` and, from ``inputs`` ({child parameter: model parameter definition}), more model
    parameters; that child's OUTPUT is the model output ``output``.

    Returns the model and the name of the output's destination parameter (see :func:`model_output_parameter`)."""
    from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildParameterSource,
                           QgsProcessingModelOutput, QgsProcessingModelParameter, QgsProcessingParameterRasterLayer)

    from tests.qgis.test_toolbox_and_modeler import child

    source = QgsProcessingModelChildParameterSource
    model = QgsProcessingModelAlgorithm(name, "tests")
    sources = {"INPUT": source.fromChildOutput("grid", "OUTPUT")}
    for d in [QgsProcessingParameterRasterLayer("s2", "Sentinel-2"), *(inputs or {}).values()]:
        model.addModelParameter(d, QgsProcessingModelParameter(d.name()))
    for param, d in (inputs or {}).items():
        sources[param] = source.fromModelParameter(d.name())
    model.addChildAlgorithm(child("thor:grid_from_raster", "grid", {
        "INPUT": source.fromModelParameter("s2"), **{k: source.fromStaticValue(v) for k, v in grid_values.items()}}))
    second = child(alg_id, child_id, {**sources, **{k: source.fromStaticValue(v) for k, v in (values or {}).items()}})
    out = QgsProcessingModelOutput(output, output)
    out.setChildOutputName("OUTPUT")
    second.setModelOutputs({output: out})
    model.addChildAlgorithm(second)
    return model, model_output_parameter(model, child_id, output)
