"""What a raster looks like, so that a wrong layer picked in a dialog is named plainly: a THOR embedding
grid where Sentinel-2 imagery is expected, or imagery / a picture where an embedding is expected.

Every raster box in QGIS preselects the top layer of the project, which after one run is the plugin's own
output: these checks are the difference between a clear sentence and a confusing failure (or a silent,
meaningless result)."""
import json
from typing import Optional

from .gdal_io import CONFIG_KEY, gdal

#: outputs of the plugin's analysis tools: pictures and answers, not embeddings
ANALYSIS_OPERATIONS = {
    "embedding_to_rgb": "the RGB picture of an embedding (thor:embedding_to_rgb)",
    "similarity_map": "a similarity map (thor:similarity_map)",
    "kmeans_classes": "a class raster of k-means clusters (thor:kmeans_clusters)",
    "change_map": "a change map (thor:change_map)",
}


def describe(path: str) -> dict:
    """{"bands", "names" (band descriptions), "dtype", "operation" (THOR_CONFIG's, if any), "thor_grid"}."""
    g = gdal()
    ds = g.Open(path)
    names = [ds.GetRasterBand(i + 1).GetDescription() or "" for i in range(ds.RasterCount)]
    dtype = g.GetDataTypeName(ds.GetRasterBand(1).DataType) if ds.RasterCount else ""
    operation = None
    raw = ds.GetMetadataItem(CONFIG_KEY)
    if raw:
        try:
            record = json.loads(raw)
            operation = record.get("operation") if isinstance(record, dict) else None
        except ValueError:
            pass
    ds = None
    thor_names = sum(1 for n in names if n.startswith("thor_"))
    return {"bands": len(names), "names": names, "dtype": dtype, "operation": operation,
            "thor_grid": bool(names) and thor_names == len(names)}


def not_imagery_reason(path: str) -> Optional[str]:
    """Why the raster at ``path`` is certainly not Sentinel-2 imagery (a plugin output), else None."""
    d = describe(path)
    if d["operation"] in ANALYSIS_OPERATIONS:
        return (f"it is {ANALYSIS_OPERATIONS[d['operation']]}, not Sentinel-2 imagery. Pick the Sentinel-2 "
                "layer (10 bands B2 … B12, or a stack with a band mapping).")
    if d["thor_grid"]:
        return (f"it looks like a THOR embedding grid ({d['bands']} bands named thor_000 …), not Sentinel-2 "
                "imagery. Pick the Sentinel-2 layer the grid was made from.")
    return None


def not_embedding_warning(path: str) -> Optional[str]:
    """A warning when the raster at ``path`` looks like something other than an embedding raster (any
    embedding raster is allowed, so this only warns), else None."""
    d = describe(path)
    if d["operation"] in ANALYSIS_OPERATIONS:
        return (f"The input looks like {ANALYSIS_OPERATIONS[d['operation']]}, not an embedding raster: the "
                "result will describe that picture, not the embeddings. Pick the THOR grid instead.")
    if d["thor_grid"]:
        return None
    if d["bands"] <= 4:
        return (f"The input has only {d['bands']} band(s): it looks like a picture, not an embedding raster "
                "(a THOR grid has one band per channel, 192 … 1024, named thor_000 …).")
    if d["dtype"] in ("UInt16", "Int16") and 10 <= d["bands"] <= 13:
        return (f"The input looks like Sentinel-2 imagery ({d['bands']} bands of {d['dtype']}), not an "
                "embedding raster: run thor:grid_from_raster on it first.")
    return None
