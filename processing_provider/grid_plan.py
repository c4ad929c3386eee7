"""The plan every grid algorithm logs before loading the model, and its DRY_RUN option and outputs."""
from qgis.core import QgsProcessingOutputNumber, QgsProcessingOutputString, QgsProcessingParameterBoolean

from . import params as P

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
