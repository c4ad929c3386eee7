"""A synthetic embedding raster with planted classes and values, for accuracy tests."""
import numpy as np

from tests.helpers import write_raster

GT = (600000.0, 10.0, 0.0, 5200000.0, 0.0, -10.0)


def planted(path, n_classes=4, channels=48, size=120, noise=1.0, seed=0):
    """Voronoi regions of random seeds as classes; each pixel = offset + class centre + Gaussian noise.
    A continuous value (for regression) varies smoothly and is encoded linearly in the embedding.
    Returns (path, truth classes 1..K [H, W], truth value [H, W])."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, (n_classes * 3, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    truth = (np.argmin(d, axis=2) % n_classes) + 1
    centres = rng.normal(0, 1, (n_classes, channels))
    offset = rng.normal(0, 1, channels) * 2.0
    value = np.sin(xx / 17.0) + np.cos(yy / 23.0)  # -2..2
    direction = rng.normal(0, 1, channels)
    emb = (offset[:, None, None] + centres[truth - 1].transpose(2, 0, 1)
           + noise * rng.normal(0, 1, (channels, size, size)) + 0.8 * value[None] * direction[:, None, None])
    write_raster(path, emb.astype(np.float32), GT, epsg=32633)
    return str(path), truth, value


def pixel_points(truth, per_class, seed=1):
    """(wkt list, labels, (rows, cols)) of ``per_class`` random pixel centres of each class."""
    rng = np.random.default_rng(seed)
    wkts, labels, rows, cols = [], [], [], []
    for c in np.unique(truth):
        r, cc = np.nonzero(truth == c)
        pick = rng.choice(r.size, per_class, replace=False)
        for i in pick:
            x = GT[0] + (cc[i] + 0.5) * GT[1]
            y = GT[3] + (r[i] + 0.5) * GT[5]
            wkts.append(f"POINT ({x} {y})")
            labels.append(int(c))
            rows.append(r[i])
            cols.append(cc[i])
    return wkts, labels, (np.array(rows), np.array(cols))
