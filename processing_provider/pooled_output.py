"""The output of the pooled-embedding algorithms (raster and Earth Engine): each feature's square read, embedded
in batches and written to the feature sink with its status; a canceled or failed run removes what it wrote."""
import json
import os

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsProcessingException,
    QgsProcessingMultiStepFeedback,
    QgsProcessingOutputLayerDefinition,
)

from .base import callbacks
from .engine_run import open_embedder
from .features import buffer_m, feature_square, output_fields, status_for, to_crs

OUTPUT = "OUTPUT"


def write_pooled_features(alg, parameters, context, feedback, source, crs_wkt, model, output, sensor, read_square,
                          steps_done: int = 1, steps_total: int = 2, status_fn=status_for):
    """Shared by the raster and Earth Engine pooled algorithms: read each feature's square through
    ``read_square(bounds) -> (array or None, valid_fraction)``, embed in batches, write the sink.
    ``status_fn(valid_fraction)`` words each feature's status."""
    steps = QgsProcessingMultiStepFeedback(steps_total, feedback)
    steps.setCurrentStep(steps_done - 1)
    embedder = open_embedder(model, sensor.scale_m, steps)
    steps.setCurrentStep(steps_done)
    progress, is_canceled, _ = callbacks(steps)
    dim = embedder.metadata["embed_dim"]
    fields = output_fields(source.fields(), dim)
    # not parameterAsOutputLayer: on a feature-sink output it registers a second, phantom layer to load
    # ("memory:…" for a temporary output), which Processing then reports as "not correctly generated"
    target = _sink_file(_sink_destination(parameters.get(OUTPUT), context))
    before = _siblings(target)
    sink, dest = alg.parameterAsSink(parameters, OUTPUT, context, fields, source.wkbType(), source.sourceCrs())
    if sink is None:
        raise QgsProcessingException(alg.invalidSinkError(parameters, OUTPUT))
    try:
        counts = _fill_sink(sink, fields, source, crs_wkt, model, output, sensor, read_square, embedder, dim,
                            progress, is_canceled, status_fn, alg, parameters, context)
    except BaseException:
        # canceled or failed: close the writer now (the traceback still references it), then remove the
        # files this run created (x.gpkg and its journals, or x.shp, x.dbf, x.shx, x.prj, ...)
        from qgis.PyQt import sip

        sip.delete(sink)
        for path in _siblings(target) - before:
            try:
                os.remove(path)
            except OSError:
                pass
        raise
    feedback.pushInfo(f"{counts['ok']} feature(s) embedded, {counts['other']} without an embedding "
                      f"(see the thor_status field).")
    return dest, counts


def _siblings(target):
    """Files that share ``target``'s name up to its extension (x.gpkg-wal, x.dbf, ...)."""
    if target is None:
        return set()
    folder, name = os.path.split(target)
    stem = os.path.splitext(name)[0]
    try:
        return {os.path.join(folder, f) for f in os.listdir(folder) if os.path.splitext(f)[0] == stem
                or f.startswith(name + "-")}
    except OSError:
        return set()


def _sink_destination(value, context) -> str:
    """The destination text of a feature-sink parameter value, evaluated without side effects."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.valueAsString(context.expressionContext())[0]
    return value if isinstance(value, str) else ""


def _sink_file(dest: str):
    """The file behind a sink destination ("path.gpkg|layername=x" → "path.gpkg"), None for memory layers."""
    if not dest or dest.startswith(("memory:", "postgres:", "ogr:", "spatialite:")):
        return None
    path = dest.split("|")[0]
    return path if os.path.isabs(path) else None


def _fill_sink(sink, fields, source, crs_wkt, model, output, sensor, read_square, embedder, dim, progress,
               is_canceled, status_fn, alg, parameters, context):
    from ..thor_qgis import pipeline
    from ..thor_qgis.errors import ThorCanceled

    transform = to_crs(source.sourceCrs(), crs_wkt, context)
    half = buffer_m(alg, parameters, context, model, sensor)
    weights = json.dumps(embedder.metadata.get("weights", {}), sort_keys=True)
    total = max(1, source.featureCount())
    statuses = {}

    def inputs():
        for feature in source.getFeatures():
            if is_canceled():
                break
            square, reason = feature_square(feature, transform, half)
            if square is None:
                statuses[feature.id()] = reason
                yield feature, None
                continue
            arr, valid = read_square(square)
            statuses[feature.id()] = status_fn(valid)
            yield feature, (arr if valid > 0 else None)

    counts = {"ok": 0, "other": 0}
    for i, (feature, vector) in enumerate(pipeline.pooled_batches(inputs(), embedder, output.pooling, is_canceled)):
        out = QgsFeature(fields)
        out.setGeometry(feature.geometry())
        attrs = list(feature.attributes()) + [embedder.metadata.get("model_key"), weights,
                                              statuses.get(feature.id(), "")]
        attrs += [float(v) for v in vector] if vector is not None else [None] * dim
        out.setAttributes(attrs)
        sink.addFeature(out, QgsFeatureSink.Flag.FastInsert)
        counts["ok" if vector is not None else "other"] += 1
        progress((i + 1) / total)
    if is_canceled():
        raise ThorCanceled("canceled")
    return counts
