"""Change between two periods: cosine distance between two embedding rasters of the same grid."""
from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import callbacks
from .styling import style_change

INPUT_A = "INPUT_A"
INPUT_B = "INPUT_B"


class ChangeAlgorithm(AnalysisAlgorithm):
    NAME = "change_map"
    DISPLAY = "Change between two embedding rasters"
    STYLE = style_change
    OUTPUT_LABEL = "Change (cosine distance)"
    HELP = ("Cosine distance (0 = same, up to 2) between the embeddings of two rasters on the same grid, "
            "for example THOR grids of one area from two date ranges. Both must have the same CRS, extent, "
            "pixel size and band count.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input(INPUT_A, "Embedding raster, first period")
        self.add_input(INPUT_B, "Embedding raster, second period")
        self.add_output()

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import analysis

        progress, is_canceled, _ = callbacks(feedback)
        record = analysis.change_map(
            embedding_path(self, parameters, context, INPUT_A), embedding_path(self, parameters, context, INPUT_B),
            self.parameterAsOutputLayer(parameters, OUTPUT, context), progress=progress, is_canceled=is_canceled)
        return self.finish(parameters, context, record)
