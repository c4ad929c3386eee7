"""The run record beside an output: the THOR_CONFIG metadata as a ``.thor.json`` file, and a one-line
summary of it for the log."""
import json
import os
from typing import Any, Dict, Optional, Tuple

from .gdal_io import gdal

SUFFIX = ".thor.json"


def sidecar_path(output: str) -> str:
    """``/x/grid.tif`` → ``/x/grid.thor.json``."""
    return os.path.splitext(output)[0] + SUFFIX


def read_record(path: str) -> Optional[Dict[str, Any]]:
    """The THOR_CONFIG record of a raster written by the plugin, or None (not a raster, no record)."""
    from .gdal_io import CONFIG_KEY

    if not os.path.isfile(path):
        return None
    g = gdal()
    try:
        ds = g.OpenEx(path, g.OF_RASTER | g.OF_READONLY)
        raw = ds.GetMetadataItem(CONFIG_KEY)
        size = (ds.RasterXSize, ds.RasterYSize, ds.RasterCount)
    except RuntimeError:  # not a raster GDAL can open
        return None
    finally:
        ds = None
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if isinstance(record, dict):
        record.setdefault("raster", {"width": size[0], "height": size[1], "bands": size[2]})
    return record if isinstance(record, dict) else None


def summary(record: Dict[str, Any], output: str) -> str:
    """One line: what was made, from what, with which model and weights."""
    model = record.get("model") or {}
    out = record.get("output") or {}
    raster = record.get("raster") or {}
    parts = []
    kind = record.get("operation") or out.get("kind") or "output"
    parts.append(f"THOR {kind}")
    if raster:
        parts.append(f"{raster.get('width')} × {raster.get('height')} px × {raster.get('bands')} band(s)")
    if model:
        weights = model.get("weights", "")
        if weights == "checkpoint" and model.get("checkpoint"):
            weights = f"checkpoint {os.path.basename(str(model['checkpoint']))}"
        elif weights == "random":
            weights = "RANDOM weights"
        parts.append(f"{model.get('model_key', '?')} ({weights})")
        if out.get("group_merge"):
            parts.append(f"merge {out['group_merge']}")
    temporal = record.get("temporal")
    if temporal:
        parts.append(f"{temporal.get('start')} … {temporal.get('end')}")
    source = record.get("source") or {}
    if isinstance(source, dict) and source.get("path"):
        parts.append(f"from {os.path.basename(str(source['path']))}")
    return " · ".join(str(p) for p in parts) + f" → {output}"


def write_sidecar(output: str) -> Tuple[Optional[str], str]:
    """Write the record of ``output`` beside it; (sidecar path or None, one-line summary or "")."""
    record = read_record(output)
    if record is None:
        return None, ""
    path = sidecar_path(output)
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path, summary(record, output)


_OPERATION_WORDS = {"embedding_to_rgb": "RGB", "similarity_map": "Similarity", "kmeans_classes": "Clusters",
                    "change_map": "Change"}


def layer_name(record: Optional[Dict[str, Any]], fallback: str) -> str:
    """A name that tells two outputs apart in the Layers panel: model, merge and dates for a grid, what an
    analysis was made from for the analysis outputs; ``fallback`` when the record says too little."""
    if not record:
        return fallback
    op = record.get("operation")
    if op:
        words = _OPERATION_WORDS.get(op, op.replace("_", " ").capitalize())
        source = record.get("source") or record.get("sources")
        if isinstance(source, (list, tuple)):
            source = " vs ".join(os.path.splitext(os.path.basename(str(p)))[0] for p in source)
        elif source:
            source = os.path.splitext(os.path.basename(str(source)))[0]
        return f"{words} of {source}" if source else words
    model = record.get("model") or {}
    if not model:
        return fallback
    parts = [fallback, model.get("model_key", "")]
    merge = (record.get("output") or {}).get("group_merge")
    if merge:
        parts.append(merge)
    temporal = record.get("temporal")
    if temporal:
        parts.append(f"{temporal.get('start')}…{temporal.get('end')}")
    if model.get("weights") == "random":
        parts.append("random weights")
    return " · ".join(p for p in parts if p)
