"""The builtin encoder against the official stack's outputs (thor_v1_tiny with seeded weights, S=288,
p=16), plus its building blocks: band names, ALiBi, sincos, PI-resize, precision independence, p=8.

The weights are made by the rule in :mod:`tests.seeded` (checked by sha256), loaded from checkpoints the
session writes in the three layouts users meet; the reference is ``tests/data/``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thor_qgis import encoder as E
from thor_qgis.encoder import (THOR_BAND_NAMES, THOR_GROUPS, ThorEncoder, alibi_slopes, full_fp32_precision,
                               pi_resize_kernel, pi_resize_matrix, s2_layout)
from thor_qgis.errors import ThorConfigError, ThorInputError
from thor_qgis.outputs import group_aware_grid, pooled
from thor_qgis.preprocess import prepare_input
from thor_qgis.weights import load_state_into, read_checkpoint
from tests import seeded

ATOL = 1e-4  # the spec's parity tolerance (tokens are ~12 in magnitude)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    enc = ThorEncoder("thor_v1_tiny")
    load_state_into(enc, read_checkpoint(str(tiny_ckpt)), "thor_v1_tiny", str(tiny_ckpt))
    return enc


@pytest.fixture(scope="module")
def prepared(raw_input):
    return prepare_input(raw_input, "thor_stats", 288)


@pytest.fixture(scope="module")
def run(tiny, prepared):
    inter = {}
    out = tiny(torch.from_numpy(prepared), s2_layout(288, 16), intermediates=inter)
    return out, inter


def _close(a, b, atol):
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    assert err <= atol, f"max abs error {err:.3g} > {atol:g}"


# ---- structure ---------------------------------------------------------------------------------


def test_seeded_weights_follow_the_rule():
    """The generator reproduces the reference's weights bit for bit (both sha256 of the rule's note)."""
    state = seeded.seeded_state(0)
    seeded.check_state(state)
    assert len(state) == 249
    assert seeded.state_sha256(seeded.seeded_state(1), [k for k in state if not seeded.is_fixed(k)]) \
        != seeded.SHA256_DRAWN  # the checksum tells seeds apart
    with pytest.raises(AssertionError, match="differ from the rule"):
        broken = dict(state)
        broken["norm.bias"] = broken["norm.bias"] + np.float32(1e-3)
        seeded.check_state(broken)


def test_seeded_checkpoint_holds_the_rules_weights(tiny_state):
    """What the session wrote (hub format) reads back as the rule's arrays, fixed keys included."""
    state = seeded.seeded_state(0)
    assert list(tiny_state) == ["encoder." + k for k in state]
    for k, v in state.items():
        assert tiny_state["encoder." + k].dtype == torch.float32
        np.testing.assert_array_equal(tiny_state["encoder." + k].numpy(), v)


def test_band_names_are_the_checkpoints(tiny_state):
    ck_bands = {k[len("encoder.ind_patch_embed.patch_embed."):-len(".weight")]
                for k in tiny_state if k.startswith("encoder.ind_patch_embed.patch_embed.") and k.endswith(".weight")}
    assert len(THOR_BAND_NAMES) == len(set(THOR_BAND_NAMES)) == 46
    assert set(THOR_BAND_NAMES) == ck_bands
    assert THOR_GROUPS[0] == ("S2:Red", "S2:Green", "S2:Blue", "S2:NIR")
    assert THOR_GROUPS[1] == ("S2:RE1", "S2:RE2", "S2:RE3", "S2:RE4", "S2:SWIR1", "S2:SWIR2")
    assert len(THOR_GROUPS) == 10


def test_state_dict_matches_checkpoint_exactly(tiny_state):
    own = ThorEncoder("thor_v1_tiny").state_dict()
    ck = {k[len("encoder."):]: v for k, v in tiny_state.items()}
    assert len(ck) == 249
    assert set(own) == set(ck)
    assert all(tuple(own[k].shape) == tuple(ck[k].shape) for k in own)


def test_fixed_values_match_the_official_ones(tiny_state):
    """ALiBi slopes exactly; the group sincos the encoder builds (float64 throughout) within 1e-7 of the
    official model's (float32 frequencies), which a checkpoint's own values replace on loading."""
    own = ThorEncoder("thor_v1_tiny").state_dict()
    assert torch.equal(own["encoder_slopes"], tiny_state["encoder.encoder_slopes"])
    for g in range(10):
        torch.testing.assert_close(own[f"band_embed.group{g}"], tiny_state[f"encoder.band_embed.group{g}"],
                                   rtol=0, atol=1e-7)


def test_alibi_slopes(tiny_state):
    assert alibi_slopes(3) == [0.0625, 0.00390625, 0.25]
    torch.testing.assert_close(torch.tensor(alibi_slopes(3)), tiny_state["encoder.encoder_slopes"])
    s16 = alibi_slopes(16)
    assert s16[0] == pytest.approx(2 ** -0.5) and s16[-1] == pytest.approx(2 ** -8)
    s12 = alibi_slopes(12)
    assert s12[:8] == alibi_slopes(8) and s12[8:] == alibi_slopes(16)[0::2][:4]
    assert len(alibi_slopes(6)) == 6


def test_s2_layout():
    lay = s2_layout(288, 16)
    assert lay.sides == (18, 9) and lay.num_tokens == 405 and lay.ground_cover_m == 2880
    assert [g.input_indices for g in lay.groups] == [(2, 1, 0, 6), (3, 4, 5, 7, 8, 9)]  # Red, Green, Blue, NIR
    assert [g.pixels for g in lay.groups] == [288, 144]
    assert s2_layout(288, 8).sides == (36, 18)
    assert s2_layout(288, 16, scale_m=20).sides == (36, 18)  # ground cover 5760 m
    with pytest.raises(ThorConfigError, match="multiple of"):
        s2_layout(280, 16)


# ---- parity with the reference ---------------------------------------------------------------


def test_alibi(run, weight_free_reference):
    _close(run[1]["alibi"], weight_free_reference["alibi"], 1e-5)


def test_aux_embeds(run, weight_free_reference):
    _close(run[1]["aux_embed_g0"], weight_free_reference["aux_embed_group0"], 1e-6)
    _close(run[1]["aux_embed_g1"], weight_free_reference["aux_embed_group1"], 1e-6)


def test_intermediates_are_consistent(tiny, run):
    """The reference holds no per-layer tokens: check the run's own bookkeeping instead (the last layer
    is the output, the embedding has the layout's token count, the final norm is the norm of the output)."""
    inter = run[1]
    assert len(inter["tokens_per_layer"]) == 12
    assert torch.equal(inter["tokens_per_layer"][-1], run[0])
    assert tuple(inter["tokens_embed"].shape) == (2, 405, 192)
    assert tuple(inter["x_pre_g1"].shape) == (2, 6, 144, 144)
    assert not torch.equal(inter["tokens_per_layer"][0], inter["tokens_embed"])


def test_tokens_last(run, reference):
    _close(run[0], reference["tokens_last"], ATOL)


@pytest.mark.parametrize("merge", ["mean", "sum", "concat"])
def test_grids(run, reference, merge):
    _close(group_aware_grid(run[0], (18, 9), merge), reference[f"grid_{merge}"], ATOL)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled(run, reference, pool):
    _close(pooled(run[0], pool), reference[f"pooled_{pool}"], ATOL)


def test_generated_weights_loaded_directly_match(raw_input, reference):
    """The rule's arrays straight into the encoder, no file in between."""
    enc = ThorEncoder("thor_v1_tiny")
    load_state_into(enc, {k: torch.from_numpy(v) for k, v in seeded.seeded_state(0).items()}, "thor_v1_tiny",
                    "seeded")
    tok = enc(torch.from_numpy(prepare_input(raw_input[:1], "thor_stats", 288)), s2_layout(288, 16))
    _close(tok, reference["tokens_last"][:1], ATOL)


@pytest.mark.parametrize("layout", ["hub", "wrapped", "bare"])
def test_every_checkpoint_layout_gives_the_reference(layout, fixture_ckpt, fixture_ckpt_wrapped,
                                                     fixture_ckpt_bare, raw_input, reference, clean_model_cache):
    """hub format (``encoder.*``), ``state_dict``-wrapped and bare keys: the same weights, the same outputs
    (tokens, the three grids, both poolings) within the parity tolerance."""
    from thor_qgis.embedder import Embedder
    from thor_qgis.specs import ModelSpec

    path = {"hub": fixture_ckpt, "wrapped": fixture_ckpt_wrapped, "bare": fixture_ckpt_bare}[layout]
    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(path), device="cpu"))
    tok = emb.tokens(raw_input)
    _close(tok, reference["tokens_last"], ATOL)
    for merge in ("mean", "sum", "concat"):
        _close(group_aware_grid(tok, (18, 9), merge), reference[f"grid_{merge}"], ATOL)
    for pool in ("mean", "max"):
        _close(pooled(tok, pool), reference[f"pooled_{pool}"], ATOL)


def test_embedder_end_to_end(tiny_ckpt, raw_input, reference, clean_model_cache):
    from thor_qgis.embedder import Embedder
    from thor_qgis.specs import ModelSpec

    logs = []
    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt),
                             batch_size=1, device="cpu"), log=logs.append)
    tok = emb.tokens(raw_input)  # two chunks of one
    assert tok.dtype == torch.float32 and tok.device.type == "cpu"
    _close(tok, reference["tokens_last"], ATOL)
    g = emb.grid(raw_input[:1], group_merge="concat")
    assert g.dtype == np.float32 and g.shape == (1, 384, 18, 18)
    _close(g, reference["grid_concat"][:1], ATOL)
    v = emb.pooled(raw_input[1], pooling="max")  # CHW input
    _close(v, reference["pooled_max"][1:], ATOL)
    md = emb.metadata
    json.dumps(md)
    assert md["model_key"] == "thor_v1_tiny" and md["backend"] == "builtin" and md["device"] == "cpu"
    assert md["weights"]["source"] == "checkpoint" and len(md["weights"]["sha256"]) == 64
    assert md["tokens_per_group"] == [324, 81] and md["ground_cover_m"] == 2880 and md["embed_dim"] == 192
    assert md["groups_used"][0].startswith("g0 ") and "Red, Green, Blue, NIR" in md["groups_used"][0]
    assert md["cls_removed"] is False and md["warnings"] == []
    assert emb.grid_side() == 18 and emb.grid_channels("concat") == 384 and emb.grid_channels("mean") == 192
    assert emb.grid_info("sum")["grid_kind"] == "group_aware"
    assert any("encoded 2/2" in m for m in logs)
    with pytest.raises(ThorInputError, match="has 4 band"):
        emb.grid(np.zeros((1, 4, 64, 64), np.float32))


# ---- precision independence -----------------------------------------------------------------


@pytest.fixture(scope="module")
def one(prepared):
    return torch.from_numpy(prepared[:1].copy())


def test_identical_under_all_matmul_precisions(tiny, one):
    lay = s2_layout(288, 16)
    results = {}
    for prec in ("highest", "high", "medium"):
        torch.set_float32_matmul_precision(prec)
        results[prec] = tiny(one, lay)
        assert torch.get_float32_matmul_precision() == prec  # the caller's setting is put back
    assert torch.equal(results["highest"], results["medium"])
    assert torch.equal(results["highest"], results["high"])


@pytest.mark.skipif(not hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"),
                    reason="torch without the per-backend fp32_precision API")
def test_identical_under_new_precision_api(tiny, one):
    lay = s2_layout(288, 16)
    torch.set_float32_matmul_precision("highest")
    base = tiny(one, lay)
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        out = tiny(one, lay)
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert torch.equal(base, out)


def test_precision_context_restores_on_error():
    torch.set_float32_matmul_precision("medium")
    with pytest.raises(RuntimeError):
        with full_fp32_precision():
            assert torch.get_float32_matmul_precision() == "highest"
            raise RuntimeError("boom")
    assert torch.get_float32_matmul_precision() == "medium"


# ---- FlexiViT PI-resize ----------------------------------------------------------------------


def test_pi_resize_p16_is_identity(tiny):
    torch.testing.assert_close(pi_resize_matrix(16), torch.eye(256, dtype=torch.float64), rtol=0, atol=1e-12)
    w = tiny.ind_patch_embed.patch_embed["S2:Red"].weight
    assert pi_resize_kernel(w, 16) is w


@pytest.mark.parametrize("p", [16, 20, 24, 32])
def test_pi_resize_keeps_constant_patch_response(tiny, p):
    """Upsampling the kernel (p ≥ 16) is exact for every input, so a constant patch of size p
    gives what the constant 16×16 patch gave with the original kernel."""
    w = tiny.ind_patch_embed.patch_embed["S2:NIR"].weight.detach()
    new = pi_resize_kernel(w, p)
    assert new.shape == (w.shape[0], 1, p, p) and new.dtype == torch.float32
    c = 0.7
    old_resp = F.conv2d(torch.full((1, 1, 16, 16), c), w, stride=16)
    new_resp = F.conv2d(torch.full((1, 1, p, p), c), new, stride=p)
    torch.testing.assert_close(new_resp, old_resp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [8, 12])
def test_pi_resize_downsampling_is_least_squares(tiny, p):
    """For p < 16 no kernel reproduces every 16×16 response (the constant response is not kept
    exactly either); the PI kernel is the least-squares one: its residual is orthogonal to the
    resize matrix's columns."""
    m = pi_resize_matrix(p)  # P = pinv(M)
    basis = torch.eye(256, dtype=torch.float64).reshape(256, 1, 16, 16)
    mm = F.interpolate(basis, size=(p, p), mode="bicubic", antialias=True, align_corners=False).reshape(256, p * p)
    torch.testing.assert_close(m, torch.linalg.pinv(mm))
    w = tiny.ind_patch_embed.patch_embed["S2:Red"].weight.detach().to(torch.float64).reshape(-1, 256)
    new = w @ m.T  # [D, p²]
    resid = new @ mm.T - w  # [D, 256]
    assert float((resid @ mm).abs().max()) < 1e-9


def test_resized_kernels_are_cached_per_patch_size(tiny_ckpt, monkeypatch):
    calls = []
    real = E.pi_resize_matrix

    def counting(new, old=16):
        calls.append(new)
        return real(new, old)

    monkeypatch.setattr(E, "pi_resize_matrix", counting)
    enc = ThorEncoder("thor_v1_tiny")
    load_state_into(enc, read_checkpoint(str(tiny_ckpt)), "thor_v1_tiny", "x")
    g8 = s2_layout(288, 8).groups
    k1 = enc.group_kernels(g8[0])
    assert enc.group_kernels(g8[0]) is k1
    enc.group_kernels(g8[1])
    assert calls == [8]  # one pseudo-inverse per patch size
    enc.group_kernels(s2_layout(288, 16).groups[0])
    assert calls == [8]  # p = 16 needs none
    enc.load_state_dict(enc.state_dict())  # new weights invalidate resized kernels
    assert enc.group_kernels(g8[0]) is not k1


# ---- p = 8 -----------------------------------------------------------------------------------


def _conv_reference_embed(enc, x, layout):
    """Straightforward reference of the embedding: per-band conv, stack-mean, + aux."""
    out = []
    for g in layout.groups:
        xb = x[:, list(g.input_indices)]
        if xb.shape[-1] != g.pixels:
            xb = F.interpolate(xb, size=(g.pixels, g.pixels), mode="bilinear", align_corners=False)
        per_band = []
        for i, band in enumerate(g.bands):
            conv = enc.ind_patch_embed.patch_embed[band]
            w = pi_resize_kernel(conv.weight, g.patch_size)
            y = F.conv2d(xb[:, i:i + 1], w, conv.bias, stride=g.patch_size)
            per_band.append(y.flatten(2).transpose(1, 2))
        out.append(torch.stack(per_band, -1).mean(-1) + enc.aux_embed(g))
    return torch.cat(out, 1)


@pytest.mark.parametrize("p", [8, 12, 16, 24])
def test_embedding_matches_conv_reference(tiny, one, p):
    lay = s2_layout(288, p)
    with torch.inference_mode():
        ours = tiny.embed(one, lay)
        ref = _conv_reference_embed(tiny, one, lay)
    assert ours.shape == (1, lay.num_tokens, 192)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_p8_run_shapes(tiny_ckpt, raw_input, clean_model_cache):
    from thor_qgis.embedder import Embedder
    from thor_qgis.outputs import tokens_to_grid
    from thor_qgis.specs import ModelSpec

    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt),
                             patch_size=8, device="cpu"))
    assert emb.metadata["tokens_per_group"] == [1296, 324]
    assert emb.grid_side() == 36 and emb.grid_channels("concat") == 384
    tok = emb.tokens(raw_input[:1])
    assert tok.shape == (1, 1620, 192) and torch.isfinite(tok).all()
    g, info = tokens_to_grid(tok, (36, 18), "concat")
    assert g.shape == (1, 384, 36, 36) and info["grid_kind"] == "group_aware"
    # the 20 m block of the concat grid is the upsampled 18×18 group grid
    g1 = tok[:, 1296:].reshape(1, 18, 18, 192).permute(0, 3, 1, 2)
    torch.testing.assert_close(g[:, 192:], F.interpolate(g1, size=(36, 36), mode="bilinear", align_corners=False))
    assert emb.grid(raw_input[:1]).shape == (1, 192, 36, 36)


def test_concurrent_use_from_threads(tiny_ckpt, raw_input, reference, clean_model_cache):
    """Processing runs algorithms in worker threads: one shared model, several callers."""
    import threading

    from thor_qgis.embedder import Embedder
    from thor_qgis.specs import ModelSpec

    spec = ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt), device="cpu")
    results, errors = {}, []

    def work(i):
        try:
            emb = Embedder(spec)
            results[i] = emb.pooled(raw_input[:1], "mean")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for v in results.values():
        np.testing.assert_array_equal(v, results[0])
    _close(results[0], reference["pooled_mean"][:1], ATOL)
