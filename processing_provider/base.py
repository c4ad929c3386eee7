"""What every THOR algorithm shares: naming, icon, dependency checks, feedback and error adaptation."""
import contextlib
import importlib.util
import os
from typing import Callable, Dict, Sequence, Tuple

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..thor_qgis.errors import ThorCanceled, ThorError

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# import name → what to tell the user to install
INSTALL_HINTS: Dict[str, str] = {
    "torch": "torch",
    "ee": "earthengine-api",
    "huggingface_hub": "huggingface_hub",
    "osgeo": "GDAL's Python bindings (they come with QGIS)",
}
INSTALLABLE = ("torch", "ee", "huggingface_hub")  # what the plugin's own installer provides

# The toolbox sorts groups by name: the numbers keep them in workflow order (imagery → embeddings → analysis).
GROUP_IMAGERY = ("imagery", "1 · Sentinel-2 imagery")
GROUP_RASTER = ("embed_raster", "2 · Embeddings from a raster layer")
GROUP_EE = ("embed_earthengine", "3 · Embeddings from Earth Engine")
GROUP_ANALYSIS = ("analysis", "4 · Embedding analysis")
GROUP_MAPPING = ("mapping", "5 · Maps from labelled features")

# what users type into the toolbox's search box; every algorithm has these, plus its own TAGS
COMMON_TAGS = ("thor", "fm4cs", "sentinel", "sentinel-2", "s2", "embedding", "embeddings", "foundation model",
               "geospatial foundation model", "deep learning", "ai", "machine learning", "vision transformer",
               "remote sensing", "earth observation")


def repository_url() -> str:
    import configparser

    cp = configparser.ConfigParser(interpolation=None)
    cp.read(os.path.join(PLUGIN_DIR, "metadata.txt"), encoding="utf-8")
    return cp.get("general", "repository", fallback="").rstrip("/")


def readme_anchor(heading: str) -> str:
    """The anchor a Markdown heading gets on the repository's web page (GitHub's rule: lower case, spaces
    to hyphens, punctuation other than hyphens and underscores dropped)."""
    text = heading.strip().lower()
    return "".join(ch for ch in text.replace(" ", "-") if ch.isalnum() or ch in "-_")


def missing_modules(names: Sequence[str]) -> Tuple[str, ...]:
    return tuple(n for n in names if importlib.util.find_spec(n) is None)


class ThorAlgorithm(QgsProcessingAlgorithm):
    """Base class. Subclasses set NAME, DISPLAY, GROUP, REQUIRES and HELP, and implement
    ``initAlgorithm`` and ``execute`` (which may raise the engine's ThorError freely)."""

    NAME = ""
    DISPLAY = ""
    GROUP = GROUP_RASTER
    REQUIRES: Tuple[str, ...] = ("osgeo",)
    HELP = ""
    TAGS: Tuple[str, ...] = ()
    STYLE = None  # style function (layer) -> None for the raster output that ``execute`` sets as ``_dest``

    # --- identity ------------------------------------------------------------------------
    def tr(self, text):
        return QCoreApplication.translate("ThorAlgorithm", text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.tr(self.DISPLAY)

    def groupId(self):  # noqa: N802
        return self.GROUP[0]

    def group(self):
        return self.tr(self.GROUP[1])

    def tags(self):
        return [self.tr(t) for t in (*COMMON_TAGS, *self.TAGS)]

    def helpUrl(self):  # noqa: N802
        """This algorithm's section of the README ("### thor:<name>" under "Algorithm reference")."""
        base = repository_url()
        return f"{base}/blob/main/README.md#{readme_anchor('thor:' + self.NAME)}" if base else ""

    def shortHelpString(self):  # noqa: N802
        text = self.tr(self.HELP)
        missing = missing_modules(self.REQUIRES)
        if missing:
            text += "\n\n" + self.tr(self._missing_message(missing))
        return text

    def icon(self):
        return QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.svg"))

    def svgIconPath(self):  # noqa: N802
        return os.path.join(PLUGIN_DIR, "resources", "icon.svg")

    # --- dependencies --------------------------------------------------------------------
    @staticmethod
    def _missing_message(missing: Sequence[str]) -> str:
        what = ", ".join(INSTALL_HINTS.get(m, m) for m in missing)
        text = (f"This algorithm needs the Python package(s) {', '.join(missing)}, which QGIS's Python "
                f"cannot import ({what}).")
        if any(m in INSTALLABLE for m in missing):
            text += (" Install them with Plugins ▸ THOR embeddings ▸ Install dependencies… (no restart needed), "
                     "or headless: in the plugin folder, run `python3 -m thor_qgis.deps install` with the Python "
                     "that QGIS uses. They go into a folder of the plugin's in your QGIS profile (or the packages folder "
                     "in the provider's settings, or $THOR_DEPS_DIR), never into QGIS's own Python.")
        return text

    def canExecute(self):  # noqa: N802
        missing = missing_modules(self.REQUIRES)
        if missing:
            return False, self._missing_message(missing)
        return True, ""

    # --- running -------------------------------------------------------------------------
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        feedback = feedback or QgsProcessingFeedback()
        self._run_feedback = feedback  # for shared helpers that warn (this instance serves one run)
        # checked here rather than in prepareAlgorithm: Processing only logs an exception raised there,
        # while one raised here reaches the user (dialog log, processing.run, qgis_process)
        ok, message = self.canExecute()
        if not ok:
            raise QgsProcessingException(message)
        try:
            with contextlib.ExitStack() as self._held:
                self._claim_outputs(parameters, context)
                results = self.execute(parameters, context, feedback)
            self._record_run(feedback)
            return results
        except ThorCanceled:
            raise QgsProcessingException(self.tr("Canceled: no output was written.")) from None
        except ThorError as e:
            raise QgsProcessingException(str(e)) from None
        except QgsProcessingException:
            raise
        except MemoryError:
            raise QgsProcessingException(self.tr(
                "Out of memory: use fewer tiles per batch, a smaller image size or a smaller area.")) from None
        except Exception as e:  # noqa: BLE001 - a last net: one line for the user, the traceback in the log
            import traceback

            feedback.pushDebugInfo("".join(traceback.format_exception(type(e), e, e.__traceback__)))
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise QgsProcessingException(
                f"{type(e).__name__}: {first} (an unexpected error: the details are in the log; please report "
                "it)") from None

    def execute(self, parameters, context, feedback) -> dict:
        raise NotImplementedError

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """Each value with what is allowed (enum options, number ranges, what is wrong with a raster file),
        then QGIS's own checks."""
        from .params import check_values

        ok, msg = check_values(self, parameters, context)
        if not ok:
            return ok, msg
        return super().checkParameterValues(parameters, context)

    def _claim_outputs(self, parameters, context) -> None:
        """Before any work: every file output's folder is writable, and the path is held for the run, so a
        second run writing the same file is refused (see thor_qgis.output_files)."""
        from qgis.core import QgsProcessingParameterFeatureSink, QgsProcessingParameterRasterDestination

        from ..thor_qgis import output_files

        for d in self.parameterDefinitions():
            raster = isinstance(d, QgsProcessingParameterRasterDestination)
            if not (raster or isinstance(d, QgsProcessingParameterFeatureSink)):
                continue
            raw = parameters.get(d.name())
            sink = getattr(raw, "sink", None)  # QgsProcessingOutputLayerDefinition
            text = sink.staticValue() if sink is not None and hasattr(sink, "staticValue") else raw
            if not isinstance(text, str) or not text.strip() or text.strip() == "TEMPORARY_OUTPUT":
                continue
            path = (self.parameterAsOutputLayer(parameters, d.name(), context) or "").strip()
            if path.startswith(("memory:", "postgres:", "ogr:", "spatialite:")) or "://" in path:
                continue
            path = path.split("|")[0]
            if not os.path.isabs(path):
                continue
            self._refuse_overwriting_an_input(parameters, context, d, path)
            self.hold(output_files.claim(path, (".tif", ".tiff") if raster else ()))

    def _refuse_overwriting_an_input(self, parameters, context, out_def, path) -> None:
        from qgis.core import QgsProcessingException, QgsProcessingParameterRasterLayer

        for d in self.parameterDefinitions():
            if not isinstance(d, QgsProcessingParameterRasterLayer) or parameters.get(d.name()) is None:
                continue
            layer = self.parameterAsRasterLayer(parameters, d.name(), context)
            src = layer.source().split("|")[0] if layer is not None else ""
            if src and os.path.exists(src) and os.path.exists(path) and os.path.samefile(src, path):
                raise QgsProcessingException(
                    f"{out_def.description()} ({out_def.name()}) is the input file {src}: the run would replace "
                    "its own input. Choose another output file.")

    def _record_run(self, feedback) -> None:
        """Beside a raster output with a THOR_CONFIG record, a sidecar ``<name>.thor.json`` with the same
        record (easy to find, read and diff), and a one-line summary of the run in the log."""
        from ..thor_qgis import run_record

        dest = getattr(self, "_dest", None)
        if not dest:
            return
        try:
            sidecar, summary = run_record.write_sidecar(dest)
        except OSError as e:
            feedback.reportError(f"Could not write the run record beside {dest}: {e}", fatalError=False)
            return
        if summary:
            feedback.pushInfo(summary)
        if sidecar:
            feedback.pushInfo(f"Run configuration: {sidecar}")

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 (main thread)
        """Style and name the output layer, if Processing loads it (``execute`` stored its path in ``_dest``):
        named from its run record, so that two grids of different models or dates are told apart."""
        dest = getattr(self, "_dest", None)
        if dest and self.STYLE is not None:
            from ..thor_qgis import run_record
            from .styling import attach

            name = ""
            if context.willLoadLayerOnCompletion(dest):
                fallback = context.layerToLoadOnCompletionDetails(dest).name
                try:
                    name = run_record.layer_name(run_record.read_record(dest), fallback)
                except Exception:  # naming is a nicety: never fail a finished run over it
                    name = ""
            attach(self, context, dest, type(self).STYLE, name=name)
        return {}

    def hold(self, context_manager):
        """Enter ``context_manager`` for the rest of this run (exited when ``execute`` ends, however)."""
        return self._held.enter_context(context_manager)


def callbacks(feedback, start: float = 0.0, end: float = 100.0) -> Tuple[Callable[[float], None],
                                                                         Callable[[], bool],
                                                                         Callable[[str], None]]:
    """(progress(fraction), is_canceled(), log(text)) for the engine, mapping 0..1 onto start..end %."""
    span = end - start

    def progress(fraction: float) -> None:
        feedback.setProgress(start + span * max(0.0, min(1.0, float(fraction))))

    return progress, feedback.isCanceled, feedback.pushInfo
