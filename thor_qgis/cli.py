"""``python -m thor_qgis grid …``: the grid run of the QGIS algorithms, headless, in this process or on a Dask
cluster (``--dask local:4`` or ``--dask tcp://scheduler:8786``). Run it from the plugin's folder (or with that
folder on PYTHONPATH)::

    python -m thor_qgis grid --raster s2.tif --model thor_v1_base --output grid.tif --dask tcp://head:8786
    python -m thor_qgis grid --ee --extent 11.0,46.0,11.2,46.1 --start 2024-06-01 --end 2024-09-01 \\
        --project my-project --output grid.tif --dask local:4

Messages and progress go to stderr; the exit status is 0 on success, 1 on an error (the message says what to
do), 130 when interrupted (Ctrl+C: the run is canceled and no file is left).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
import time
from typing import List, Optional, Sequence

from . import specs
from .errors import ThorCanceled, ThorError
from .tiling import DEFAULT_MARGIN, DEFAULT_SEAMS, SEAM_MODES


def _floats(text: str, n: int, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated numbers, got {text!r}") from None
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thor_qgis", description="THOR embeddings without QGIS.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="a token-grid GeoTIFF from a raster or Earth Engine",
                       description="The token grid of THOR as a georeferenced GeoTIFF (thor:grid_from_raster, "
                                   "thor:ee_grid), in this process or on a Dask cluster.")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--raster", help="a Sentinel-2 surface reflectance raster (a path every Dask worker reads)")
    src.add_argument("--ee", action="store_true", help="fetch a Sentinel-2 composite from Earth Engine")
    g.add_argument("--output", "-o", required=True, help="the GeoTIFF to write")
    g.add_argument("--dask", default="", help="empty: this process; local:N; tcp://host:8786")
    area = g.add_argument_group("area")
    area.add_argument("--extent", type=lambda t: _floats(t, 4, "--extent"),
                      help="xmin,ymin,xmax,ymax (default for a raster: all of it)")
    area.add_argument("--extent-crs", default=None,
                      help="CRS of --extent (default: the raster's; EPSG:4326 with --ee)")
    area.add_argument("--point", type=lambda t: _floats(t, 2, "--point"), help="lon,lat (--ee): a square around it")
    area.add_argument("--buffer", type=float, default=None, help="half side of the square around --point, metres "
                                                                 "(default half a tile)")
    ras = g.add_argument_group("raster")
    ras.add_argument("--band-map", default="", help="10 band numbers for B2 B3 B4 B5 B6 B7 B8 B8A B11 B12")
    ras.add_argument("--dn-offset", type=float, default=None,
                     help="added to the pixel values (-1000 for L2A products of baseline 04.00 and later); "
                          "default: the offset the raster's metadata states (BOA_ADD_OFFSET), else 0")
    ee = g.add_argument_group("Earth Engine")
    ee.add_argument("--start", default="2024-06-01")
    ee.add_argument("--end", default="2024-09-01", help="end date, excluded")
    ee.add_argument("--collection", default=specs.DEFAULT_COLLECTION)
    ee.add_argument("--cloudy-pct", type=float, default=30.0)
    ee.add_argument("--composite", default="median", choices=specs.COMPOSITES)
    ee.add_argument("--project", default=None, help="the Cloud project registered for Earth Engine")
    ee.add_argument("--api-url", default=None, help="another endpoint (default $THOR_EE_API_URL, else Google's)")
    ee.add_argument("--service-account-key", default=None,
                    help="path of a service-account JSON key file (on the Dask workers too, at the same path)")
    ee.add_argument("--fetch-workers", type=int, default=None, help="parallel requests in this process")
    ee.add_argument("--no-cache", action="store_true", help="do not use the on-disk tile cache")
    m = g.add_argument_group("model")
    m.add_argument("--model", default="thor_v1_base", choices=tuple(specs.MODEL_VARIANTS))
    m.add_argument("--weights", default="hub", choices=specs.WEIGHT_SOURCES)
    m.add_argument("--checkpoint", default=None, help="with --weights checkpoint (a path on every worker)")
    m.add_argument("--image-size", type=int, default=288)
    m.add_argument("--patch-size", type=int, default=16)
    m.add_argument("--normalization", default="thor_stats", choices=specs.NORMALIZATIONS)
    m.add_argument("--device", default="auto", choices=specs.DEVICES)
    m.add_argument("--backend", default="auto", choices=specs.BACKENDS)
    m.add_argument("--batch-size", type=int, default=0, help="tiles per batch (0: automatic, from the device)")
    m.add_argument("--precision", default="float32", choices=specs.PRECISIONS)
    m.add_argument("--group-merge", default="mean", choices=specs.GROUP_MERGES)
    m.add_argument("--seams", default=DEFAULT_SEAMS, choices=SEAM_MODES)
    m.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help="context margin in tokens")
    m.add_argument("--scale", type=float, default=10.0, help="pixel size in metres")
    m.add_argument("--fill-value", type=float, default=0.0)
    return p


class _Reporter:
    """Progress text on stderr, at most once a second (and the last one)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.last = 0.0

    def log(self, msg: str) -> None:
        self.stream.write(msg + "\n")
        self.stream.flush()

    def text(self, msg: str) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0 or "done" in msg:
            self.last = now
            self.log(f"  {msg}")


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def run_grid(args: argparse.Namespace, cancel: threading.Event, out: _Reporter):
    from . import distributed, limits, pipeline
    from .raster_source import RasterSource, lonlat_of, parse_band_map, transform_bounds
    from .tiling import global_layout, square_around, utm_epsg

    model = specs.ModelSpec(model_key=args.model, weights=args.weights, checkpoint=args.checkpoint,
                            image_size=args.image_size, patch_size=args.patch_size,
                            normalization=args.normalization, device=args.device, backend=args.backend,
                            batch_size=args.batch_size, precision=args.precision)
    output = specs.OutputSpec(kind="grid", group_merge=args.group_merge)
    sched = distributed.parse_scheduler(args.dask)
    if sched is not None:
        distributed.import_distributed()
    is_canceled = cancel.is_set
    side = model.grid_side(args.scale)
    if args.raster:
        sensor = specs.SensorSpec(scale_m=args.scale, fill_value=args.fill_value)
        band_map = parse_band_map(args.band_map)
        source = RasterSource(args.raster, band_map=band_map, dn_offset=args.dn_offset, scale_m=args.scale,
                              fill_value=args.fill_value, log=out.log)
        area = source.area(tuple(args.extent) if args.extent else None, args.extent_crs)

        def layout_for(n):
            return source.layout(area, model.image_size, n, margin=args.margin, seams=args.seams)

        def check(layout):
            limits.check_grid(layout, model, args.group_merge, args.scale, hint="Check --extent and --extent-crs. ")

        temporal = None
        source_rec = {"kind": "raster", "path": source.path, "band_map": list(source.band_map),
                      "dn_offset": source.dn_offset, "resampled_to_scale": source.resampled}
        imagery = distributed.RasterImagery(source.path, band_map=tuple(source.band_map),
                                            dn_offset=source.dn_offset, scale_m=args.scale,
                                            fill_value=args.fill_value)
    else:
        from . import ee_fetch, ee_session

        sensor = specs.SensorSpec(collection=args.collection, scale_m=args.scale, cloudy_pct=args.cloudy_pct,
                                  composite=args.composite, fill_value=args.fill_value)
        temporal = specs.TemporalSpec(_date(args.start), _date(args.end))
        if (args.extent is None) == (args.point is None):
            raise ThorError("give either --extent or --point with --ee")
        crs_in = args.extent_crs or "EPSG:4326"
        if args.point is not None:
            x, y = args.point
            lon, lat = lonlat_of(x, y, crs_in)
            utm = f"EPSG:{utm_epsg(lon, lat)}"
            px, py, _, _ = transform_bounds((x, y, x, y), crs_in, utm, densify=2)
            half = args.buffer if args.buffer is not None else model.ground_cover_m(args.scale) / 2.0
            s = args.scale
            cx, cy = round(px / s) * s, round(py / s) * s  # centred on the nearest pixel corner
            bounds = square_around(cx, cy, half)
        else:
            b = args.extent
            lon, lat = lonlat_of((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0, crs_in)
            utm = f"EPSG:{utm_epsg(lon, lat)}"
            bounds = transform_bounds(tuple(b), crs_in, utm)

        def layout_for(n):
            return global_layout(bounds, utm, args.scale, model.image_size, n, seams=args.seams, margin=args.margin)

        def check(layout):
            limits.check_requests(layout.n_tiles, f"tiles of {layout.tile_size_m:g} m",
                                  hint="Check --extent (xmin ymin xmax ymax) and --extent-crs. ")

        url = ee_session.resolve_api_url(args.api_url)
        imagery = distributed.EarthEngineImagery(sensor, temporal, project=args.project, api_url=url,
                                                 service_account_key=args.service_account_key,
                                                 cache=not args.no_cache)
        fetch_workers = ee_fetch.clamp_workers(args.fetch_workers)
        source_rec = None
    layout = layout_for(side)
    check(layout)  # before anything is loaded or fetched
    out.log(f"{layout.n_tiles} tile(s) of {layout.tile_size_m:g} m ({layout.tiles_x} × {layout.tiles_y}), output "
            f"{layout.width} × {layout.height} pixels of {layout.output_pixel_size():g} m"
            + (f", on {sched.describe()}" if sched else ", in this process") + ".")

    def relayout(n):  # the model's own token grid wins; the new layout meets the same limits
        new = layout_for(n)
        out.log(f"The model's token grid is {n} tokens a side, not the {layout.grid_side} planned: "
                f"{new.n_tiles} tile(s) now.")
        check(new)
        return new

    def record(session=None):
        src = source_rec
        if src is None:
            src = ee_fetch.fetch_record(sensor, temporal, session, workers=fetch_workers)
            src["kind"] = "earth_engine"
        return specs.resolved_config(model, output, sensor, temporal, source=src)

    if sched is not None:
        work = distributed.GridWork(layout=layout, model=model, imagery=imagery, group_merge=args.group_merge,
                                    scale_m=args.scale, fill_value=args.fill_value)
        with distributed.connect(sched, out.log) as client:
            run = distributed.ClusterGrid(client, log=out.log, is_canceled=is_canceled)
            ready = run.prepare(work)
            if ready.model.grid_side() != layout.grid_side:
                import dataclasses

                work = dataclasses.replace(work, layout=relayout(ready.model.grid_side()))
            return run.write_grid(work, ready.model, args.output, metadata=record(ready.session),
                                  progress_text=out.text)
    from .embedder import Embedder

    session = None
    if args.ee:
        session = ee_session.ensure_session(args.project, url=url, service_account_key=args.service_account_key,
                                            log=out.log)
    embedder = Embedder(model, scale_m=args.scale, log=out.log)
    if embedder.grid_side() != layout.grid_side:
        layout = relayout(embedder.grid_side())
    if args.raster:
        tiles = source.tiles(layout)
    else:
        tiles = ee_fetch.fetch_tiles(layout, sensor, temporal, workers=fetch_workers, cache=not args.no_cache,
                                     is_canceled=is_canceled, log=out.log, on_empty="error")
    try:
        return pipeline.write_grid(layout, tiles, embedder, args.group_merge, args.output,
                                   metadata=record(session), fill_value=args.fill_value, is_canceled=is_canceled,
                                   log=out.log, progress_text=out.text)
    finally:
        close = getattr(tiles, "close", None)
        if close is not None:
            close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    out = _Reporter()
    cancel = threading.Event()
    try:
        result = run_grid(args, cancel, out)
    except KeyboardInterrupt:
        cancel.set()
        out.log("Interrupted: canceled, no file written.")
        return 130
    except ThorCanceled:
        out.log("Canceled: no file written.")
        return 130
    except (ThorError, ValueError, OSError) as e:
        out.log(f"Error: {e}")
        return 1
    out.log(f"Wrote {result.path}: {result.width} × {result.height} pixels, {result.band_count} bands, "
            f"{result.tiles} tile(s).")
    return 0
