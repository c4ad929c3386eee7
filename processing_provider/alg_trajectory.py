"""Change over several dates: trajectory magnitude, the largest single change and when it happened."""
from qgis.core import QgsProcessing, QgsProcessingException, QgsProcessingParameterMultipleLayers

from .analysis_common import OUTPUT, AnalysisAlgorithm
from .base import callbacks
from .styling import style_change

INPUTS = "INPUTS"


class TrajectoryAlgorithm(AnalysisAlgorithm):
    NAME = "trajectory_map"
    DISPLAY = "Change over several dates (trajectory)"
    STYLE = style_change
    OUTPUT_LABEL = "Trajectory"
    HELP = ("For embedding rasters of one place from several date ranges, in time order and on the same grid, "
            "writes three bands: the trajectory magnitude (sum of the cosine distances between successive "
            "dates), the largest single change (cosine distance) and its step (1 = between the first and "
            "second raster, …). The steps' dates are recorded in the output's THOR_CONFIG metadata. A cell that "
            "is nodata at any date is nodata.")

    def initAlgorithm(self, config=None):  # noqa: N802
        inputs = QgsProcessingParameterMultipleLayers(
            INPUTS, self.tr("Embedding rasters (in time order)"), QgsProcessing.SourceType.TypeRaster)
        inputs.setHelp(self.tr("At least three embedding rasters of the same place on the same grid, earliest "
                               "first."))
        self.addParameter(inputs)
        self.add_output()

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import trajectory

        layers = self.parameterAsLayerList(parameters, INPUTS, context)
        paths = []
        for layer in layers:
            if layer.providerType() != "gdal":
                raise QgsProcessingException(f"The layer '{layer.name()}' is not a file GDAL can read.")
            paths.append(layer.source())
        progress, is_canceled, _ = callbacks(feedback)
        record = trajectory.trajectory_map(paths, self.parameterAsOutputLayer(parameters, OUTPUT, context),
                                           labels=[layer.name() for layer in layers], progress=progress,
                                           is_canceled=is_canceled)
        for step, label in record["steps"].items():
            feedback.pushInfo(f"step {step}: {label}")
        return self.finish(parameters, context, record)
