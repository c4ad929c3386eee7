"""Earth Engine parameters shared by the ``thor:ee_*`` algorithms, and the session they open.

- ``PROJECT``: the Google Cloud project registered for Earth Engine. Its default is taken, when the
  algorithm is defined, from ``$EE_PROJECT``, ``$GOOGLE_CLOUD_PROJECT`` or the plugin setting
  (Settings ▸ Options ▸ Processing ▸ Providers ▸ THOR embeddings) (in that order); empty is allowed (the project stored with the credentials, a service
  account's own project, or ``thor-local`` against a local emulator is used then).
- ``SERVICE_ACCOUNT_KEY`` (advanced): a service-account JSON key file instead of the credentials that
  ``earthengine authenticate`` stores.
- ``USE_CACHE`` (advanced): keep fetched imagery on disk (``$THOR_CACHE_DIR``, else ~/.cache/thor_qgis/ee).

The API URL is not a parameter: ``$THOR_EE_API_URL``, else the provider setting, else Google's
endpoint. Settings are read in ``prepareAlgorithm`` (main thread); the session is opened in the worker.
Nothing here imports the Earth Engine client or touches the network when an algorithm is defined.
"""
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from . import params as P
from .compat import FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, WKT_PREFERRED_GDAL
from . import settings
from ..thor_qgis.errors import ThorConfigError

PROJECT = "PROJECT"
SERVICE_ACCOUNT_KEY = "SERVICE_ACCOUNT_KEY"
USE_CACHE = "USE_CACHE"
REQUEST_DEADLINE = "REQUEST_DEADLINE"

PROJECT_ENV_VARS = ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT")
ENV_API_URL = "THOR_EE_API_URL"  # the engine reads the same variable (thor_qgis.ee_session.ENV_API_URL)


def default_project() -> str:
    """The Cloud project to pre-fill: ``$EE_PROJECT``, ``$GOOGLE_CLOUD_PROJECT``, the plugin setting, or ''."""
    for var in PROJECT_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return settings.text(settings.EE_PROJECT)


def configured_api_url() -> Optional[str]:
    """``$THOR_EE_API_URL``, else the provider setting, else None (Google's endpoint).
    Not validated here: the session does that, with a what-to-do message."""
    return settings.text(settings.EE_API_URL, ENV_API_URL) or None


def add_imagery_params(alg, tr) -> None:
    """What every ``thor:ee_*`` algorithm asks about its imagery: the dates, the sensor, the parallel requests
    and the Earth Engine parameters."""
    P.add_temporal_params(alg, tr)
    P.add_sensor_params(alg, tr)
    P.add_fetch_workers_param(alg, tr)
    add_ee_params(alg, tr)


def add_ee_params(alg, tr) -> None:
    p = QgsProcessingParameterString(PROJECT, tr("Earth Engine project"),
                                     defaultValue=default_project(), optional=True)
    P._help(p, tr("The Cloud project registered for Earth Engine (requests are billed to and counted against "
                  "it). Empty: the project stored by `earthengine set_project`, the service account's own "
                  "project, or none against a local emulator. Default from $EE_PROJECT, "
                  "$GOOGLE_CLOUD_PROJECT or the provider's settings (Settings ▸ Options ▸ Processing ▸ Providers ▸ THOR embeddings)."))
    alg.addParameter(p)
    alg.addParameter(P._advanced(QgsProcessingParameterFile(
        SERVICE_ACCOUNT_KEY, tr("Service-account JSON key"),
        behavior=FILE_BEHAVIOR_FILE, extension="json", optional=True),
        tr("Empty: the credentials that `earthengine authenticate` stored. Else a JSON key of a service "
           "account registered for Earth Engine (Cloud console > IAM > Service "
           "accounts > Keys). Only its path is recorded, never its content.")))
    from qgis.core import QgsProcessingParameterNumber

    alg.addParameter(P._advanced(QgsProcessingParameterNumber(
        REQUEST_DEADLINE, tr("Earth Engine request deadline (s)"), NUMBER_DOUBLE,
        defaultValue=_default_deadline(), minValue=1.0, maxValue=3600.0),
        tr("How long one request may take before it is abandoned and tried once more. A request and its "
           "retries together take at most twice this plus a minute. Default from $THOR_EE_DEADLINE_S, else "
           "120 s.")))
    alg.addParameter(P._advanced(QgsProcessingParameterBoolean(
        USE_CACHE, tr("Keep fetched imagery in the disk cache"), defaultValue=True),
        tr("Fetched tiles are kept in $THOR_CACHE_DIR (default ~/.cache/thor_qgis/ee) and reused by later "
           "runs with the same request. Date ranges that reach past today are never cached.")))


def _default_deadline() -> float:
    from ..thor_qgis import ee_session

    try:
        return ee_session.default_deadline_s()
    except ThorConfigError:  # reported when a run starts (see ee_config)
        return ee_session.DEFAULT_DEADLINE_S


@dataclass(frozen=True)
class EEConfig:
    """What a run needs to open its Earth Engine session (no secrets: a key file's path only)."""

    project: Optional[str]
    api_url: Optional[str]
    service_account_key: Optional[str]
    use_cache: bool
    deadline_s: Optional[float] = None
    cache_dir: Optional[str] = None

    def policy(self):
        """The retry policy of the run's requests (its per-request deadline)."""
        from ..thor_qgis.ee_fetch import RetryPolicy
        from ..thor_qgis.ee_session import default_deadline_s

        return RetryPolicy(deadline_s=self.deadline_s if self.deadline_s else default_deadline_s())

    @property
    def cache(self):
        """What the fetchers take: False (no cache), a folder (the setting), or True (the default folder)."""
        return (self.cache_dir or True) if self.use_cache else False


def ee_config(alg, parameters, context, api_url: Optional[str]) -> EEConfig:
    project = (alg.parameterAsString(parameters, PROJECT, context) or "").strip() or None
    key = (alg.parameterAsFile(parameters, SERVICE_ACCOUNT_KEY, context) or "").strip() or None
    deadline = None
    if alg.parameterDefinition(REQUEST_DEADLINE) is not None and parameters.get(REQUEST_DEADLINE) is not None:
        deadline = alg.parameterAsDouble(parameters, REQUEST_DEADLINE, context) or None
    if deadline is None:
        from ..thor_qgis.ee_session import default_deadline_s

        deadline = default_deadline_s()  # a bad $THOR_EE_DEADLINE_S is an error naming it
    return EEConfig(project=project, api_url=api_url, service_account_key=key,
                    use_cache=alg.parameterAsBool(parameters, USE_CACHE, context), deadline_s=deadline,
                    cache_dir=cache_dir())


def cache_dir() -> Optional[str]:
    """The imagery cache folder: $THOR_CACHE_DIR, else the provider setting, else None (the default)."""
    from ..thor_qgis.ee_fetch import ENV_CACHE_DIR

    return settings.text(settings.CACHE_DIR, ENV_CACHE_DIR) or None


def api_kind(url: Optional[str]) -> str:
    """How the endpoint is described in an output's metadata."""
    from ..thor_qgis.ee_session import is_loopback_url

    if not url:
        return "google default endpoint"
    if is_loopback_url(url):
        return "local emulator"
    return "custom endpoint"


def open_session(cfg: EEConfig, feedback):
    """Initialise (or reuse) the Earth Engine session for ``cfg``; raises ThorConfigError / ThorFetchError
    saying what to do. Without a project against a real endpoint, no request is made: the user is told to
    set the Cloud project (and, if needed, to authenticate)."""
    from ..thor_qgis import ee_session

    url = ee_session.resolve_api_url(cfg.api_url)
    if cfg.project is None and not ee_session.is_loopback_url(url) and cfg.service_account_key is None:
        # ensure_session would report missing credentials first; a missing project is the first thing to fix
        try:
            _, stored_project, _, _ = ee_session.resolve_credentials(url)
        except ThorConfigError as e:
            raise ThorConfigError("no Google Cloud project for Earth Engine: " + ee_session.PROJECT_HELP
                                  + f". Also, {e}") from None
        if not stored_project:
            raise ThorConfigError("no Google Cloud project for Earth Engine: " + ee_session.PROJECT_HELP + ".")
    info = ee_session.ensure_session(cfg.project, url=url, service_account_key=cfg.service_account_key,
                                     log=feedback.pushInfo)
    feedback.pushInfo(f"Earth Engine: project {info.project}, {api_kind(info.api_url)}"
                      f"{' ' + ee_session.redact(info.api_url) if info.api_url else ''}, credentials: {info.auth}.")
    return info


def source_record(sensor, temporal, session, cfg: EEConfig, workers: int, **extra: Any) -> Dict[str, Any]:
    """The imagery part of an output's metadata: the fetch record (collection, dates, cloud %, composite,
    fill, scale, project, endpoint) and the endpoint's kind. No credentials."""
    from ..thor_qgis.ee_fetch import fetch_record

    rec = fetch_record(sensor, temporal, session, workers=workers, **extra)
    rec["kind"] = "earth_engine"
    rec["api_kind"] = api_kind(session.api_url)
    rec["cache"] = bool(cfg.use_cache)
    return rec


def progress_polling(feedback, total: int, start: float = 0.0, end: float = 100.0, stats=None):
    """``(is_canceled, stats)`` for engine calls that take no progress callback (write_composite_geotiff):
    the cancel check, which the engine polls about every 50 ms while it waits for a request, also reports
    ``stats.items / total`` as progress. Only from the thread that called this (the engine polls the
    check from its fetch threads too, and Processing's feedback is reported from the algorithm's thread)."""
    import threading

    from ..thor_qgis.ee_fetch import FetchStats

    stats = stats if stats is not None else FetchStats()
    owner = threading.get_ident()
    span = end - start
    total = max(1, int(total))

    def is_canceled() -> bool:
        if threading.get_ident() == owner:
            feedback.setProgress(start + span * min(1.0, stats.items / total))
        return feedback.isCanceled()

    return is_canceled, stats


# --------------------------------------------------------------------------------------------
# Areas: an extent or a point in any CRS, resolved on the main thread, put on a UTM grid in the worker
# --------------------------------------------------------------------------------------------



@dataclass(frozen=True)
class AreaInput:
    """An extent (``bounds``) or a ``point`` in ``crs`` ("EPSG:n" or WKT), as the user gave it."""

    kind: str  # "extent" or "point"
    crs: str
    bounds: Optional[tuple] = None
    point: Optional[tuple] = None

    def as_record(self) -> Dict[str, Any]:
        rec: Dict[str, Any] = {"kind": self.kind, "crs": self.crs if self.crs.startswith("EPSG:") else "WKT"}
        if self.bounds is not None:
            rec["bounds"] = list(self.bounds)
        if self.point is not None:
            rec["point"] = list(self.point)
        return rec


def is_unset(value: Any) -> bool:
    """True for a parameter value that means 'not given' (None, '', a null QVariant or rectangle)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        from qgis.PyQt.QtCore import QVariant

        if isinstance(value, QVariant) and value.isNull():
            return True
    except ImportError:  # pragma: no cover
        pass
    is_null = getattr(value, "isNull", None)
    if callable(is_null) and type(value).__name__ in ("QgsRectangle", "QgsReferencedRectangle"):
        return bool(is_null())
    return False


def crs_string(crs) -> str:
    """"EPSG:n" for an EPSG CRS, else its WKT (what GDAL and the engine take)."""
    authid = crs.authid() or ""
    if authid.upper().startswith("EPSG:"):
        return authid.upper()
    return crs.toWkt(WKT_PREFERRED_GDAL)


def read_extent(alg, parameters, name: str, context) -> Optional[AreaInput]:
    """The extent parameter as given (its own CRS), None when not set. Main thread: an extent may name a
    layer of the project, and an extent without a CRS takes the project's."""
    from qgis.core import QgsProcessingException

    raw = parameters.get(name)
    if is_unset(raw):
        return None
    P.refuse_inverted_extent(raw)
    rect = alg.parameterAsExtent(parameters, name, context)
    if rect.isNull():
        return None
    if not (rect.width() > 0 and rect.height() > 0):
        raise QgsProcessingException("The extent is empty: it has no width or no height.")
    crs = alg.parameterAsExtentCrs(parameters, name, context)
    if not crs.isValid():
        raise QgsProcessingException("The extent has no coordinate reference system: give it with the extent, "
                                     "e.g. '9.1,9.2,45.4,45.5 [EPSG:4326]'.")
    return AreaInput("extent", crs_string(crs),
                     bounds=(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()))


def read_point(alg, parameters, name: str, context) -> Optional[AreaInput]:
    from qgis.core import QgsProcessingException

    if is_unset(parameters.get(name)):
        return None
    pt = alg.parameterAsPoint(parameters, name, context)
    crs = alg.parameterAsPointCrs(parameters, name, context)
    if not crs.isValid():
        raise QgsProcessingException("The point has no coordinate reference system: give it with the point, "
                                     "e.g. '9.15,45.45 [EPSG:4326]'.")
    return AreaInput("point", crs_string(crs), point=(pt.x(), pt.y()))


def check_request_count(n: int, what: str, **estimate) -> None:
    """Refuse a run that would send more than ``$THOR_EE_MAX_REQUESTS`` (10 000) requests: usually an
    extent typed in the wrong order or the wrong CRS, which would otherwise run for days. Same style and
    estimate as the raster path's tile limit (thor_qgis.limits)."""
    from qgis.core import QgsProcessingException

    from ..thor_qgis import limits
    from ..thor_qgis.errors import ThorError

    try:
        limits.check_requests(n, what, hint="Check the extent: QGIS extents are xmin, xmax, ymin, ymax, in the CRS "
                                            "given in brackets. ", **estimate)
    except ThorError as e:
        raise QgsProcessingException(str(e)) from None


def utm_area(area: AreaInput, half_side_m: Optional[float] = None):
    """``(bounds, "EPSG:326zz"/"EPSG:327zz")``: the area in the WGS 84 / UTM zone of its centre; a point
    becomes the square of side ``2 * half_side_m`` around it. Worker-safe (GDAL only)."""
    from ..thor_qgis.raster_source import lonlat_of, transform_bounds
    from ..thor_qgis.tiling import square_around, utm_epsg

    if area.kind == "point":
        x, y = area.point
    else:
        b = area.bounds
        x, y = (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0
    lon, lat = lonlat_of(x, y, area.crs)
    utm = f"EPSG:{utm_epsg(lon, lat)}"
    if area.kind == "point":
        px, py, _, _ = transform_bounds((x, y, x, y), area.crs, utm, densify=2)
        return square_around(px, py, float(half_side_m)), utm
    return transform_bounds(tuple(area.bounds), area.crs, utm), utm


class Deferred:
    """A value computed in ``prepareAlgorithm`` whose error is raised in ``processAlgorithm`` (QGIS only
    logs an exception raised while preparing; raised while processing, the caller gets its message)."""

    def __init__(self, fn):
        from qgis.core import QgsProcessingException

        self.value, self.error = None, None
        try:
            self.value = fn()
        except (QgsProcessingException, ThorConfigError) as e:
            self.error = str(e)

    def get(self):
        from qgis.core import QgsProcessingException

        if self.error is not None:
            raise QgsProcessingException(self.error)
        return self.value


class ReadsArea:
    """Mixed into an Earth Engine algorithm that reads an area with ``self._read_area(parameters, context)``:
    the endpoint setting and the area are read in ``prepareAlgorithm`` (main thread), the area's error is
    raised by ``area()`` in the run."""

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (main thread)
        super().prepareAlgorithm(parameters, context, feedback)
        self._api_url = configured_api_url()
        self._area = Deferred(lambda: self._read_area(parameters, context))
        return True

    def area(self, parameters, context, feedback) -> AreaInput:
        if not hasattr(self, "_area"):  # processAlgorithm called without prepareAlgorithm
            self.prepareAlgorithm(parameters, context, feedback)
        return self._area.get()
