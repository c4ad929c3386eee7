#!/usr/bin/env python3
"""Wall time of a 16-tile thor:ee_grid run (4 x 4 tiles of 2880 m) with 1 and with 8 parallel requests.

The algorithm runs through processing.run in a headless QGIS, as the toolbox would run it, with the real
Embedder (thor_v1_tiny, random weights: the time does not depend on them) and the real earthengine-api
client talking to the fake service of tests/fake_ee.py on 127.0.0.1, which holds every computePixels
answer for the injected latency (300 ms by default: about what a 288 x 288 x 10 composite takes on the
service for an easy area). The disk cache is off (USE_CACHE=false). The model is loaded by a warm-up run
before anything is timed; a run with no latency shows the floor set by the model and the I/O.

    .venv/bin/python scripts/bench_ee_grid.py [--latency 0.3] [--workers 1 8] [--batch 4] [--repeat 1]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]
os.makedirs(os.path.join(ROOT, ".build", "bench-profile"), exist_ok=True)
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", os.path.join(ROOT, ".build", "bench-profile"))

EXTENT = "500000,511520,3988480,4000000 [EPSG:32633]"  # 11520 m = 4 tiles of 2880 m a side


def start_qgis():
    from qgis.core import QgsApplication

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    import importlib

    from tests.conftest import PLUGIN_NAME  # links .build/plugins/thor_embeddings to this checkout

    plugin = importlib.import_module(PLUGIN_NAME).classFactory(None)
    plugin.initProcessing()
    return app, plugin


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.3, help="injected latency per request, seconds")
    ap.add_argument("--workers", type=int, nargs=2, default=[1, 8])
    ap.add_argument("--batch", type=int, default=4, help="tiles per model batch")
    ap.add_argument("--repeat", type=int, default=1, help="runs per setting (the median is printed)")
    ap.add_argument("--model", default="thor_v1_tiny")
    args = ap.parse_args()

    app, plugin = start_qgis()
    import processing
    from qgis.core import QgsProcessingFeedback

    from tests.fake_ee import FakeEarthEngine

    with tempfile.TemporaryDirectory() as work, FakeEarthEngine(latency_s=0.0) as fake:
        os.environ["THOR_EE_API_URL"] = fake.url
        os.environ["THOR_CACHE_DIR"] = os.path.join(work, "cache")
        base = {"MODEL_KEY": args.model, "PRETRAINED": False, "BATCH_SIZE": args.batch, "USE_CACHE": False,
                "PROJECT": "thor-bench"}

        def run(workers, extent=EXTENT):
            fake.reset_log()
            out = os.path.join(work, f"grid_{workers}_{time.monotonic_ns()}.tif")
            t0 = time.perf_counter()
            res = processing.run("thor:ee_grid", dict(base, EXTENT=extent, FETCH_WORKERS=workers, OUTPUT=out),
                                 feedback=QgsProcessingFeedback())
            wall = time.perf_counter() - t0
            assert res["TILES"] == 16 or extent != EXTENT, res
            return wall, fake.count(), fake.max_concurrency

        run(2, "500000,502880,3997120,4000000 [EPSG:32633]")  # warm-up: model, session, connections
        floor = statistics.median(run(8)[0] for _ in range(args.repeat))
        fake.latency_s = args.latency
        print(f"thor:ee_grid, 16 tiles (4 x 4) of 288 x 288 px x 10 bands, {args.model} (random weights), "
              f"batch {args.batch}, cache off, {args.latency * 1000:.0f} ms latency per request")
        print(f"  no latency (model + I/O floor), 8 workers: {floor:6.2f} s")
        times = {}
        for w in args.workers:
            runs = [run(w) for _ in range(args.repeat)]
            times[w] = statistics.median(r[0] for r in runs)
            print(f"  FETCH_WORKERS {w:2d}: {times[w]:6.2f} s  ({runs[-1][1]} requests, at most "
                  f"{runs[-1][2]} at once)")
        w1, w8 = args.workers
        print(f"  ratio FETCH_WORKERS {w1} / FETCH_WORKERS {w8} = {times[w1] / times[w8]:.2f}")
    plugin.unload()
    app.exitQgis()


if __name__ == "__main__":
    main()
