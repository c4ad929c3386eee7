#!/usr/bin/env python3
"""Wall time of a 16-tile Earth Engine fetch with 1 and with 8 parallel requests, against the local fake.

The real earthengine-api client talks to tests/fake_ee.py on 127.0.0.1 with an injected latency of 300 ms
per computePixels request (about what a 288 x 288 x 10 composite takes on the service for an easy area).
Tiles are 288 x 288 px at 10 m, the cache is off. Each run is timed twice: with a consumer that takes a fixed
time per tile (default 100 ms, standing in for the model) and with no consumer at all (fetch only).

    .venv/bin/python scripts/bench_ee_fetch.py [--tiles 16] [--latency 0.3] [--consumer-ms 100]
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]

from tests.fake_ee import FakeEarthEngine  # noqa: E402
from thor_qgis import ee_fetch, ee_session  # noqa: E402
from thor_qgis.specs import SensorSpec, TemporalSpec  # noqa: E402
from thor_qgis.tiling import layout_for_area  # noqa: E402


def run(layout, workers, consumer_s):
    sensor, temporal = SensorSpec(), TemporalSpec("2024-06-01", "2024-07-01")
    t0 = time.perf_counter()
    n = 0
    for _tile, arr in ee_fetch.fetch_tiles(layout, sensor, temporal, workers=workers, cache=False):
        assert arr.shape == (10, layout.image_size, layout.image_size)
        if consumer_s:
            time.sleep(consumer_s)
        n += 1
    return time.perf_counter() - t0, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=16, help="number of tiles (a row of them)")
    ap.add_argument("--latency", type=float, default=0.3, help="injected latency per request, seconds")
    ap.add_argument("--consumer-ms", type=float, default=100.0, help="consumer time per tile, ms")
    ap.add_argument("--image-size", type=int, default=288)
    ap.add_argument("--workers", type=int, nargs=2, default=[1, 8])
    args = ap.parse_args()

    g = 10.0 * args.image_size
    layout = layout_for_area((500000.0, 4000000.0, 500000.0 + args.tiles * g, 4000000.0 + g), "EPSG:32633",
                             10.0, args.image_size, args.image_size // 16)
    with tempfile.TemporaryDirectory() as home, FakeEarthEngine(latency_s=args.latency) as fake:
        os.environ["THOR_CACHE_DIR"] = os.path.join(home, "cache")
        ee_session.ensure_session(project="thor-bench", url=fake.url)
        run(layout, 2, 0.0)  # warm-up: connections, imports
        print(f"{layout.n_tiles} tiles of {args.image_size}x{args.image_size} px x 10 bands, "
              f"{args.latency * 1000:.0f} ms latency per request, cache off")
        for consumer_ms in (args.consumer_ms, 0.0):
            times = {}
            for w in args.workers:
                fake.reset_log()
                times[w], n = run(layout, w, consumer_ms / 1000.0)
                print(f"  consumer {consumer_ms:5.0f} ms/tile, workers {w:2d}: {times[w]:6.2f} s "
                      f"({n} tiles, {fake.count()} requests, at most {fake.max_concurrency} at once)")
            w1, w8 = args.workers
            print(f"  consumer {consumer_ms:5.0f} ms/tile: ratio workers {w1} / workers {w8} = "
                  f"{times[w1] / times[w8]:.2f}")
        ee_session.reset_session()


if __name__ == "__main__":
    main()
