"""Similarity search (mean / medoid / max references, threshold mask, top-k cells) and automatic k,
on synthetic embedding rasters with planted classes."""
import numpy as np
import pytest
from osgeo import gdal

from tests.engine.planted import GT, pixel_points, planted
from tests.helpers import write_raster
from thor_qgis import analysis, search
from thor_qgis.errors import ThorConfigError


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    src, truth, _ = planted(d / "emb.tif", noise=0.6)
    return src, truth


def test_mean_reference_matches_similarity_map_and_mask_and_top_k(scene, tmp_path):
    src, truth = scene
    wkts, labels, (rows, cols) = pixel_points(truth, 20)
    refs = [w for w, l in zip(wkts, labels) if l == 2]
    vec, _ = analysis.reference_embedding(src, refs)
    analysis.similarity_map(src, str(tmp_path / "ref.tif"), vec)
    ref = gdal.Open(str(tmp_path / "ref.tif")).ReadAsArray()
    # a threshold half-way between class 2 and the most similar other class (all classes share an offset)
    thr = float((ref[truth == 2].mean() + max(ref[truth == c].mean() for c in (1, 3, 4))) / 2)
    out, mask = tmp_path / "s.tif", tmp_path / "m.tif"
    rec = search.similarity_search(src, str(out), refs, "mean", threshold=thr, dst_mask=str(mask), top_k=50)
    a = gdal.Open(str(out)).ReadAsArray()
    assert np.allclose(a, ref, atol=1e-5)
    m = gdal.Open(str(mask)).ReadAsArray()
    assert np.array_equal(m, (a >= np.float32(thr)).astype(np.uint8))
    # the mask finds class 2: precision and recall both high on planted classes
    assert ((m == 1) & (truth == 2)).sum() / (m == 1).sum() > 0.95
    assert ((m == 1) & (truth == 2)).sum() / (truth == 2).sum() > 0.9
    top = rec["top"]
    assert len(top) == 50 and [t["rank"] for t in top] == list(range(1, 51))
    sims = [t["similarity"] for t in top]
    assert sims == sorted(sims, reverse=True)
    assert all(truth[t["row"], t["col"]] == 2 for t in top)
    ref_cells = {(r, c) for r, c, l in zip(rows, cols, labels) if l == 2}
    assert not ref_cells & {(t["row"], t["col"]) for t in top}  # references themselves excluded
    assert a[top[-1]["row"], top[-1]["col"]] == pytest.approx(top[-1]["similarity"], abs=1e-6)
    t0 = top[0]
    assert (t0["x"], t0["y"]) == (GT[0] + (t0["col"] + 0.5) * GT[1], GT[3] + (t0["row"] + 0.5) * GT[5])


def test_medoid_ignores_an_outlier_and_max_finds_every_kind(scene, tmp_path):
    src, truth = scene
    wkts, labels, _ = pixel_points(truth, 10)
    c1 = [w for w, l in zip(wkts, labels) if l == 1]
    c3 = [w for w, l in zip(wkts, labels) if l == 3]
    refs = c1 + c3[:1]  # ten of class 1 and one outlier of class 3
    sims = {}
    for ref in ("mean", "medoid", "max"):
        search.similarity_search(src, str(tmp_path / f"{ref}.tif"), refs, ref)
        sims[ref] = gdal.Open(str(tmp_path / f"{ref}.tif")).ReadAsArray()
    # the medoid is a class-1 cell: class 3 scores lower against it than against the mean
    assert sims["medoid"][truth == 3].mean() < sims["mean"][truth == 3].mean()
    # max similarity: class 3 cells look like the one class-3 reference
    assert sims["max"][truth == 3].mean() > sims["mean"][truth == 3].mean() + 0.1
    assert sims["max"][truth == 1].mean() > sims["max"][truth == 2].mean() + 0.05


def test_choose_k_finds_the_planted_number_of_classes(tmp_path):
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 3, (5, 16))
    truth = rng.integers(0, 5, (40, 40))
    emb = centres[truth].transpose(2, 0, 1) + rng.normal(0, 1, (16, 40, 40))
    src = write_raster(tmp_path / "e.tif", emb.astype(np.float32), GT)
    res = search.choose_k(src, 2, 8, seed=0, sample_size=1600, silhouette_size=800)
    assert res["k"] == 5, res["scores"]
    assert set(res["scores"]) == set(range(2, 9))


def test_search_bad_inputs(scene, tmp_path):
    src, truth = scene
    wkts, *_ = pixel_points(truth, 2)
    with pytest.raises(ThorConfigError, match="threshold"):
        search.similarity_search(src, str(tmp_path / "s.tif"), wkts, dst_mask=str(tmp_path / "m.tif"))
    with pytest.raises(ThorConfigError, match="between -1 and 1"):
        search.similarity_search(src, str(tmp_path / "s.tif"), wkts, threshold=2)
    with pytest.raises(ThorConfigError, match="unknown reference"):
        search.similarity_search(src, str(tmp_path / "s.tif"), wkts, "median")
    with pytest.raises(ThorConfigError, match="empty"):
        search.choose_k(src, 6, 3)
    assert list(tmp_path.iterdir()) == []
