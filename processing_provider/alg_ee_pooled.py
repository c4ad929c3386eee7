"""Pooled THOR embeddings for the features of a vector layer, from Earth Engine imagery."""
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
)

from . import ee_params as E
from . import params as P
from .base import GROUP_EE, ThorAlgorithm
from .compat import SOURCE_VECTOR_ANY_GEOMETRY, WKT_PREFERRED_GDAL
from .engine_run import resolve_common
from .features import add_buffer_param, buffer_m, feature_square, status_for, to_crs
from .pooled_output import OUTPUT, write_pooled_features

FEATURES = "FEATURES"

Square = Tuple[float, float, float, float]


def working_crs(source, context, feedback) -> str:
    """"EPSG:326zz"/"EPSG:327zz": the UTM zone of the centre of the layer's extent (the squares are built
    and fetched in it). A layer spanning several zones is warned about: far from that zone the squares are
    distorted."""
    from ..thor_qgis.tiling import utm_epsg

    extent = source.sourceExtent()
    lon, lat = 0.0, 0.0
    if not extent.isNull() and extent.width() >= 0 and extent.height() >= 0:
        to_wgs84 = QgsCoordinateTransform(source.sourceCrs(), QgsCoordinateReferenceSystem("EPSG:4326"),
                                          context.transformContext())
        try:
            geo = to_wgs84.transformBoundingBox(extent)
            c = geo.center()
            lon, lat = max(-180.0, min(180.0, c.x())), max(-90.0, min(90.0, c.y()))
            if geo.width() > 6.0:
                feedback.reportError(
                    f"The features span {geo.width():.0f}° of longitude, more than one UTM zone: their squares "
                    f"are built in the zone of the layer's centre and are distorted far from it. Split the layer "
                    "by UTM zone for exact squares.", fatalError=False)
        except Exception as e:  # QgsCsException: an extent the transform cannot handle
            feedback.reportError(f"The layer's extent cannot be located in longitude/latitude ({e}); "
                                 "using UTM zone 31N.", fatalError=False)
    return f"EPSG:{utm_epsg(lon, lat)}"


def ee_status(valid_fraction: float) -> str:
    """The thor_status of a feature whose imagery came from Earth Engine."""
    return status_for(valid_fraction, "no imagery: no scene matches the dates and cloud threshold here")


class PatchReader:
    """``read(square) -> (array or None, valid fraction)`` for write_pooled_features, served from parallel
    Earth Engine fetches of the same squares, in the same order, started on the first read."""

    def __init__(self, items: Sequence[Tuple[Square, object]], crs: str, sensor, temporal, *, image_size: int,
                 workers: int, cache: bool, is_canceled, log, policy=None):
        self._items = list(items)
        self._crs, self._sensor, self._temporal = crs, sensor, temporal
        self._kw = dict(image_size=int(image_size), workers=workers, cache=cache, is_canceled=is_canceled,
                        log=log, on_empty="fill", policy=policy)
        self._log = log
        self._current = None
        self._iter: Optional[Iterator] = None
        self.empty: List[object] = []

    def _patches(self) -> Iterator[Tuple[Square, object, object]]:
        from ..thor_qgis import ee_fetch

        items = self._items
        centres = [((sq[0] + sq[2]) / 2.0, (sq[1] + sq[3]) / 2.0) for sq, _ in items]
        halves = [(sq[2] - sq[0]) / 2.0 for sq, _ in items]
        self._current = ee_fetch.fetch_patches(centres, halves, self._crs, self._sensor, self._temporal,
                                               **self._kw)
        try:
            for i, patch in self._current:
                yield items[i][0], items[i][1], patch
        finally:
            self._current.close()
            self._current = None

    def read(self, square: Square):
        if self._iter is None:
            self._iter = self._patches()
        try:
            expected, key, patch = next(self._iter)
        except StopIteration:
            raise QgsProcessingException("Internal error: more feature squares than were fetched (the layer "
                                         "changed during the run?).") from None
        if not np.allclose(expected, square, rtol=0, atol=1e-6):
            raise QgsProcessingException("Internal error: the features came in another order than when they "
                                         "were fetched (the layer changed during the run?).")
        arr = patch.array
        from ..thor_qgis.pipeline import valid_pixels

        valid = float(np.mean(valid_pixels(arr, self._sensor.fill_value))) if arr.size else 0.0
        if valid <= 0:
            self.empty.append(key)
            self._log(f"Feature {key}: no Sentinel-2 imagery in its square (no scene of "
                      f"{self._sensor.collection} matches the dates and cloud threshold there, or no data).")
        return arr, valid

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()
            self._iter = None


class EEPooledAlgorithm(ThorAlgorithm):
    NAME = "ee_pooled"
    DISPLAY = "Pooled THOR embeddings for features (Earth Engine)"
    GROUP = GROUP_EE
    REQUIRES = ("osgeo", "torch", "ee")
    HELP = ("For each feature, fetches a Sentinel-2 surface reflectance composite from Google Earth Engine over "
            "a square (points: side 2 × buffer around them, 2880 m by default; polygons and lines: their "
            "bounding square), runs THOR on it and pools the tokens into one vector. Squares are fetched "
            "in parallel, as image size × image size pixels, in the WGS 84 / UTM zone of the layer's centre.\n\n"
            "The output keeps the input attributes and adds thor_model, thor_weights, thor_status and one "
            "field per embedding dimension (thor_000, …). A feature where no scene matches the filters (or "
            "with no data at all) gets a status saying there is no imagery, and empty embedding fields; the "
            "log names it.\n\n"
            "Earth Engine needs a Google Cloud project and credentials (`earthengine authenticate`, or a "
            "service-account key); $THOR_EE_API_URL (or the endpoint in the provider's settings) points the algorithm "
            "at another endpoint, such as a local emulator.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFeatureSource(
            FEATURES, self.tr("Features (points or polygons)"),
            SOURCE_VECTOR_ANY_GEOMETRY))
        add_buffer_param(self, self.tr)
        E.add_imagery_params(self, self.tr)
        P.add_model_params(self, self.tr)
        P.add_pooling_param(self, self.tr)
        self.addParameter(QgsProcessingParameterFeatureSink(OUTPUT, self.tr("Pooled THOR embeddings")))
        self.addOutput(QgsProcessingOutputNumber("EMBEDDED", self.tr("Features embedded")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, msg = P.check_model_values(self, parameters, context)
        return (ok, msg) if not ok else super().checkParameterValues(parameters, context)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (main thread)
        super().prepareAlgorithm(parameters, context, feedback)
        self._api_url = E.configured_api_url()
        return True

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import ee_fetch, ee_session

        if not hasattr(self, "_api_url"):
            self.prepareAlgorithm(parameters, context, feedback)
        model, output, sensor = resolve_common(self, parameters, context, grid=False, earth_engine=True)
        temporal = P.temporal_spec(self, parameters, context)
        workers = ee_fetch.clamp_workers(self.parameterAsInt(parameters, P.FETCH_WORKERS, context))
        cfg = E.ee_config(self, parameters, context, self._api_url)
        source = self.parameterAsSource(parameters, FEATURES, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, FEATURES))
        crs = working_crs(source, context, feedback)
        crs_wkt = QgsCoordinateReferenceSystem(crs).toWkt(WKT_PREFERRED_GDAL)
        session = E.open_session(cfg, feedback)
        # keep the process-wide Earth Engine client on this project until the run ends
        self.hold(ee_session.session_in_use(session))

        # the squares, as write_pooled_features will ask for them, so that they can be fetched ahead
        half = buffer_m(self, parameters, context, model, sensor)
        transform = to_crs(source.sourceCrs(), crs_wkt, context)
        items = []
        for feature in source.getFeatures():
            if feedback.isCanceled():
                raise QgsProcessingException(self.tr("Canceled: no output was written."))
            square, _ = feature_square(feature, transform, half)
            if square is not None:
                items.append((square, feature.id()))
        feedback.pushInfo(f"{len(items)} feature square(s) to fetch in {crs} ({workers} parallel requests); "
                          f"session project {session.project}.")
        reader = PatchReader(items, crs, sensor, temporal, image_size=model.image_size, workers=workers,
                             cache=cfg.cache, is_canceled=feedback.isCanceled, log=feedback.pushInfo,
                             policy=cfg.policy())
        try:
            dest, counts = write_pooled_features(self, parameters, context, feedback, source, crs_wkt, model,
                                                 output, sensor, reader.read, status_fn=ee_status)
        finally:
            reader.close()
        if reader.empty:
            feedback.reportError(f"{len(reader.empty)} feature(s) have no imagery for these dates and cloud "
                                 "threshold: widen the date range or raise the cloudy-pixel threshold.",
                                 fatalError=False)
        return {OUTPUT: dest, "EMBEDDED": counts["ok"]}
