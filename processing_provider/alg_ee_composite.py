"""Sentinel-2 surface reflectance composite from Earth Engine as a 10-band GeoTIFF (B2 … B12)."""
from qgis.core import (
    Qgis,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterExtent,
    QgsProcessingParameterRasterDestination,
)

from . import ee_params as E
from . import params as P
from .base import GROUP_IMAGERY, ThorAlgorithm
from .provider import plugin_version
from .styling import style_true_colour

EXTENT = "EXTENT"
OUTPUT = "OUTPUT"


class EECompositeAlgorithm(E.ReadsArea, ThorAlgorithm):
    NAME = "ee_composite"
    DISPLAY = "Sentinel-2 composite from Earth Engine"
    STYLE = style_true_colour
    GROUP = GROUP_IMAGERY
    REQUIRES = ("osgeo", "ee")
    HELP = ("Fetches a Sentinel-2 surface reflectance composite (median, mean, min, max or least-cloudy mosaic "
            "of the scenes between the two dates under the cloudy-pixel threshold) from Google Earth Engine "
            "and writes it as a 10-band float32 GeoTIFF, bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12, ready for "
            "the raster algorithms (THOR grid from raster layer, pooled embeddings).\n\n"
            "The extent may be in any CRS: the output is on the WGS 84 / UTM grid of the extent's centre at "
            "the pixel size (10 m by default), its top-left corner on a multiple of the pixel size. Pixels "
            "with no data take the fill value (also the nodata value). The request (collection, dates, cloud "
            "threshold, composite, project, endpoint; never credentials) is stored in the file's metadata "
            "(THOR_CONFIG).\n\n"
            "Earth Engine needs a Google Cloud project registered for it, and credentials: run `earthengine "
            "authenticate` once, or give a service-account key. $THOR_EE_API_URL (or the endpoint in "
            "the provider's settings) points the algorithm at another endpoint, such as a local emulator.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterExtent(EXTENT, self.tr("Extent")))
        E.add_imagery_params(self, self.tr)
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, self.tr("Sentinel-2 composite")))
        for key, label in (("WIDTH", "Width (pixels)"), ("HEIGHT", "Height (pixels)"), ("BANDS", "Bands")):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))
        self.addOutput(QgsProcessingOutputString("CRS", self.tr("CRS of the output")))

    def _read_area(self, parameters, context):
        from qgis.core import QgsProcessingException

        area = E.read_extent(self, parameters, EXTENT, context)
        if area is None:
            raise QgsProcessingException("Give the extent to fetch.")
        return area

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import ee_fetch, ee_session

        area = self.area(parameters, context, feedback)
        sensor = P.sensor_spec(self, parameters, context, earth_engine=True)
        temporal = P.temporal_spec(self, parameters, context)
        workers = ee_fetch.clamp_workers(self.parameterAsInt(parameters, P.FETCH_WORKERS, context))
        cfg = E.ee_config(self, parameters, context, self._api_url)
        dest = self.parameterAsOutputLayer(parameters, OUTPUT, context)

        bounds, crs = E.utm_area(area)
        layout = ee_fetch.composite_layout(bounds, crs, sensor.scale_m)
        E.check_request_count(layout.n_tiles, f"blocks of {layout.image_size} × {layout.image_size} px")
        feedback.pushInfo(f"Area in {crs}: ({bounds[0]:.1f}, {bounds[1]:.1f}) – ({bounds[2]:.1f}, {bounds[3]:.1f}); "
                          f"{layout.n_tiles} request(s) of up to {layout.image_size} × {layout.image_size} px "
                          f"at {sensor.scale_m:g} m.")
        session = E.open_session(cfg, feedback)
        # keep the process-wide Earth Engine client on this project until the run ends
        self.hold(ee_session.session_in_use(session))
        is_canceled, stats = E.progress_polling(feedback, layout.n_tiles)
        record = E.source_record(sensor, temporal, session, cfg, workers, area=area.as_record(),
                                 algorithm=f"thor:{self.NAME}", plugin_version=plugin_version(),
                                 qgis_version=Qgis.QGIS_VERSION)
        result = ee_fetch.write_composite_geotiff(bounds, sensor, temporal, dest, crs=crs, workers=workers,
                                                  cache=cfg.cache, is_canceled=is_canceled,
                                                  log=feedback.pushInfo, metadata=record, stats=stats,
                                                  policy=cfg.policy())
        feedback.setProgress(100)
        feedback.pushInfo(f"Wrote {result.path}: {result.width} × {result.height} pixels of "
                          f"{sensor.scale_m:g} m in {crs}, {len(sensor.bands)} bands.")
        self._dest = dest
        return {OUTPUT: dest, "WIDTH": result.width, "HEIGHT": result.height, "BANDS": len(sensor.bands),
                "CRS": crs}
