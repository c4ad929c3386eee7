"""The DASK_SCHEDULER option of the grid algorithms: tiles embedded on a Dask cluster (thor_qgis.distributed)."""
import dataclasses

from qgis.core import QgsProcessingParameterString

from . import params as P

DASK_SCHEDULER = "DASK_SCHEDULER"

HELP = ("Empty: the model runs in this process. local:N: a Dask cluster of N worker processes on this computer, "
        "started for the run. tcp://host:8786: the workers of a running Dask scheduler (a lab cluster, cloud VMs, "
        "an HPC job started with dask-jobqueue). Tiles are sent to the workers in small batches; each worker loads "
        "the model once and reads its own imagery (the raster at the same path, or Earth Engine tiles with its "
        "own credentials or a key file at the same path), and this process writes the same GeoTIFF as without a "
        "cluster. Needs dask[distributed] (the plugin says how to install it). See the README's cluster section.")


def add_dask_param(alg, tr) -> None:
    alg.addParameter(P._advanced(QgsProcessingParameterString(
        DASK_SCHEDULER, tr("Dask scheduler"), defaultValue="", optional=True), tr(HELP)))


def scheduler(alg, parameters, context):
    """The parsed option (None: in-process); a ThorConfigError says what is wrong with it, or what to install."""
    from ..thor_qgis import distributed

    if alg.parameterDefinition(DASK_SCHEDULER) is None:
        return None
    spec = distributed.parse_scheduler(alg.parameterAsString(parameters, DASK_SCHEDULER, context))
    if spec is not None:
        distributed.import_distributed()
    return spec


def run_grid(spec, work, dest, record_for, relayout, feedback, progress, is_canceled, log, progress_text):
    """Run ``work`` on the cluster ``spec`` and write ``dest``; ``record_for(prepared)`` gives the metadata
    (the workers' Earth Engine session is known only then). Returns (GridResult, the layout used)."""
    from ..thor_qgis import distributed

    with distributed.connect(spec, log) as client:
        run = distributed.ClusterGrid(client, log=log, is_canceled=is_canceled)
        ready = run.prepare(work)
        md = ready.model.metadata
        feedback.pushInfo(f"Model ready on the workers: {md.get('model_key')} on {md.get('device')} with the "
                          f"{md.get('backend')} backend; weights {md.get('weights')}.")
        if ready.model.grid_side() != work.layout.grid_side:  # the backend's own token grid wins
            work = dataclasses.replace(work, layout=relayout(ready.model.grid_side()))
        result = run.write_grid(work, ready.model, dest, metadata=record_for(ready), progress=progress, log=log,
                                progress_text=progress_text)
    return result, work.layout
