"""What the embedding-analysis algorithms share: the input embedding raster and the styled output."""
from qgis.core import QgsProcessingException, QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer

from .base import GROUP_ANALYSIS, ThorAlgorithm

INPUT = "INPUT"
OUTPUT = "OUTPUT"


def embedding_path(alg, parameters, context, name: str = INPUT) -> str:
    """The file behind an embedding-raster parameter; a layer that looks like something else (imagery, a
    picture made from an embedding) gets a warning in the run's log."""
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"The embedding raster ({name}) could not be loaded.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"The layer '{layer.name()}' is not a file GDAL can read (provider {layer.providerType()}).")
    feedback = getattr(alg, "_run_feedback", None)
    if feedback is not None:
        from ..thor_qgis.raster_kind import not_embedding_warning

        try:
            warning = not_embedding_warning(layer.source())
        except RuntimeError:  # unreadable: the analysis reader says what is wrong with the file
            warning = None
        if warning:
            feedback.reportError(f"'{layer.name()}': {warning}", fatalError=False)
    return layer.source()


class AnalysisAlgorithm(ThorAlgorithm):
    """An algorithm that reads embedding rasters and writes one styled raster (numpy and GDAL only)."""

    GROUP = GROUP_ANALYSIS
    REQUIRES = ("osgeo",)
    OUTPUT_LABEL = "Output"

    def add_input(self, name: str = INPUT, label: str = "Embedding raster"):
        self.addParameter(QgsProcessingParameterRasterLayer(name, self.tr(label)))

    def add_output(self):
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, self.tr(self.OUTPUT_LABEL)))

    def finish(self, parameters, context, record: dict) -> dict:
        self._dest = record.get("output") or self.parameterAsOutputLayer(parameters, OUTPUT, context)
        return {OUTPUT: self._dest}
