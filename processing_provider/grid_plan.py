"""The plan every grid algorithm logs before loading the model, its DRY_RUN option and outputs, and the
parameters that follow the model's in every grid algorithm."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
)

from . import cluster
from . import params as P
from ..thor_qgis.errors import ThorInputError

DRY_RUN = "DRY_RUN"
PLAN_OUTPUTS = (("OUTPUT_BYTES", "Output size before compression (bytes)"),
                ("ESTIMATED_SECONDS", "Estimated time for the model (s; empty without a stored figure)"),
                ("EE_REQUESTS", "Earth Engine requests"))


def add_dry_run_param(alg, tr) -> None:
    alg.addParameter(P._advanced(QgsProcessingParameterBoolean(
        DRY_RUN, tr("Dry run (plan only)"), defaultValue=False),
        tr("Stops after the plan (tiles, token grid, output size, Earth Engine requests, estimated time) and "
           "returns it as outputs, to check a large extent before spending hours on it.")))


def add_plan_outputs(alg, tr) -> None:
    alg.addOutput(QgsProcessingOutputString("PLAN", tr("Plan")))
    for key, label in PLAN_OUTPUTS:
        alg.addOutput(QgsProcessingOutputNumber(key, tr(label)))


def add_model_and_grid_params(alg, tr, output: str) -> None:
    """The model parameters and, after them, what every grid algorithm adds: where the model runs (Dask),
    the grid's outputs and context margin, DRY_RUN, the grid destination ``output`` and the plan outputs."""
    P.add_model_params(alg, tr)
    cluster.add_dask_param(alg, tr)  # with the model: where it runs
    P.add_grid_output_params(alg, tr)
    P.add_context_margin_param(alg, tr)
    add_dry_run_param(alg, tr)
    P.add_grid_destination(alg, tr, output)
    add_plan_outputs(alg, tr)


def is_dry_run(alg, parameters, context) -> bool:
    return alg.parameterDefinition(DRY_RUN) is not None and alg.parameterAsBool(parameters, DRY_RUN, context)


def resolved_device(model) -> str:
    from ..thor_qgis.backends import resolve_device

    try:
        return resolve_device(model.device)
    except Exception:  # an unavailable device is reported when the model is loaded
        return str(model.device)


def make_plan(layout, model, group_merge: str, scale_m: float, earth_engine: bool = False):
    from ..thor_qgis import plan

    return plan.grid_plan(layout, model, plan.grid_channels(model, group_merge, scale_m),
                          device=resolved_device(model), earth_engine=earth_engine)


def log_plan(feedback, grid_plan) -> None:
    for line in grid_plan.lines():
        feedback.pushInfo(line)


def plan_outputs(grid_plan) -> dict:
    """The plan as the algorithm's outputs (with WIDTH, HEIGHT, BANDS and TILES)."""
    return {"WIDTH": grid_plan.width, "HEIGHT": grid_plan.height, "BANDS": grid_plan.channels,
            "TILES": grid_plan.tiles, "PLAN": "\n".join(grid_plan.lines()), "OUTPUT_BYTES": grid_plan.output_bytes,
            "ESTIMATED_SECONDS": grid_plan.estimated_seconds, "EE_REQUESTS": grid_plan.ee_requests or 0}


class GridPlanner:
    """A grid run's tile layout and plan, made before anything is loaded from the token grid the
    specification gives, and made again when the loaded model has a token grid of its own.

    ``layout_for(grid_side)`` lays the tiles out; ``check(layout, hint)`` refuses a layout past the limits
    (ThorInputError or QgsProcessingException, ``hint`` said with a real run's refusal). Every layout a run
    uses goes through it, the planned one and the one made again for the model's own token grid."""

    def __init__(self, layout_for, check, model, group_merge: str, scale_m: float, feedback,
                 earth_engine: bool = False, hint: str = ""):
        self._layout_for, self._check, self._hint, self._feedback = layout_for, check, hint, feedback
        self._model, self._group_merge, self._scale_m, self._earth_engine = model, group_merge, scale_m, earth_engine
        self.layout, self.plan = self._plan_for(model.grid_side(scale_m))

    def _plan_for(self, grid_side: int):
        layout = self._layout_for(grid_side)
        return layout, make_plan(layout, self._model, self._group_merge, self._scale_m,
                                 earth_engine=self._earth_engine)

    def start(self, alg, parameters, context, dry_run_note: str):
        """Log the plan. On a dry run, say whether a real run would stop and return the plan's outputs;
        otherwise refuse a layout past the limits and return None."""
        feedback = self._feedback
        log_plan(feedback, self.plan)
        if is_dry_run(alg, parameters, context):
            try:
                self._check(self.layout, "")
            except (ThorInputError, QgsProcessingException) as e:
                feedback.reportError(f"A real run would stop here: {e}", fatalError=False)
            feedback.pushInfo(dry_run_note)
            return plan_outputs(self.plan)
        self._check(self.layout, self._hint)
        return None

    def relayout(self, grid_side: int):
        """The layout for the loaded model's own token grid (the backend's wins), and its plan, refused past
        the limits like the planned one: before anything is written."""
        if grid_side != self.layout.grid_side:
            layout, plan = self._plan_for(grid_side)
            self._feedback.pushInfo(f"The model's token grid is {grid_side} tokens a side, not the "
                                    f"{self.layout.grid_side} planned: the tiles are laid out again.")
            log_plan(self._feedback, plan)
            self._check(layout, self._hint)
            self.layout, self.plan = layout, plan
        return self.layout
