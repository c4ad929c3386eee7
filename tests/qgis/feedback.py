"""A Processing feedback that keeps what the algorithm reports, for the tests to read."""
from qgis.core import QgsProcessingFeedback


class LogFeedback(QgsProcessingFeedback):
    """Keeps every line the algorithm reports."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def pushInfo(self, info):  # noqa: N802
        self.lines.append(info)
        super().pushInfo(info)

    def reportError(self, error, fatalError=False):  # noqa: N802,N803
        self.lines.append(error)
        super().reportError(error, fatalError)

    def pushWarning(self, warning):  # noqa: N802
        self.lines.append(warning)
        super().pushWarning(warning)

    @property
    def text(self):
        return "\n".join(self.lines)
