"""Reduced precision, devices and automatic batch size.

The bounds tests run the real encoder (thor_v1_tiny, the tests' seeded weights and input) in float32 and
in bfloat16 on this CPU. Device and precision *selection* is tested with faked availability functions: that checks the
decision logic only, it is not a run on a GPU or on Apple MPS (those tests skip without the device).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thor_qgis import accel
from thor_qgis.encoder import ThorEncoder, s2_layout
from tests.seeded import seeded_input, seeded_state
from thor_qgis.errors import ThorBackendError, ThorConfigError
from thor_qgis.preprocess import prepare_input
from thor_qgis.specs import PRECISIONS, ModelSpec, OutputSpec, model_spec_from_env, resolved_config

TOKEN_COS = 0.999  # per-token cosine similarity to float32, at least
POOLED_COS = 0.9999  # pooled (mean) vector cosine similarity to float32, at least

AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "flags\t\t: fpu avx512f amx_bf16 amx_tile\n"
PLAIN = "flags\t\t: fpu sse2 avx2 fma\n"


def seeded_tiny(seed: int = 0) -> ThorEncoder:
    """thor_v1_tiny with the tests' seeded weights (see tests/seeded.py)."""
    enc = ThorEncoder("thor_v1_tiny")
    enc.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state(seed).items()})
    return enc


@pytest.fixture(scope="module")
def tiny():
    return seeded_tiny(0)


@pytest.fixture(scope="module")
def batch():
    """The seeded reference input, normalised as the plugin does: [2, 10, 288, 288]."""
    return torch.from_numpy(prepare_input(seeded_input(), "thor_stats", 288))


def fidelity(a: torch.Tensor, ref: torch.Tensor):
    tok = F.cosine_similarity(a, ref, dim=-1)
    pooled = F.cosine_similarity(a.mean(1), ref.mean(1), dim=-1)
    return float(tok.min()), float(pooled.min()), float((a - ref).abs().max())


# ---- the encoder in bfloat16 -------------------------------------------------------------------


def test_float32_is_the_default_and_unchanged(tiny, batch):
    lay = s2_layout(288, 16)
    a = tiny(batch, lay)
    b = tiny(batch, lay, precision="float32")
    assert a.dtype == torch.float32
    assert torch.equal(a, b)


def test_bfloat16_within_cosine_bounds(tiny, batch):
    lay = s2_layout(288, 16)
    ref = tiny(batch, lay)
    out = tiny(batch, lay, precision="bfloat16")
    assert out.dtype == torch.float32 and out.shape == ref.shape
    tok, pooled, maxabs = fidelity(out, ref)
    assert tok >= TOKEN_COS, tok
    assert pooled >= POOLED_COS, pooled
    assert 0 < maxabs < 0.5  # reduced precision shows, and stays small (tokens are O(1..10))


def test_bfloat16_against_the_official_float32_reference(tiny, batch):
    """The seeded fixture: bfloat16 tokens against the official stack's float32 tokens (tests/data)."""
    from pathlib import Path

    with np.load(Path(__file__).resolve().parents[1] / "data" / "thor_v1_tiny_seed0_p16_outputs.npz") as z:
        ref = torch.from_numpy(z["tokens_last"]).double()
    lay = s2_layout(288, 16)
    f32 = tiny(batch, lay).double()
    assert float((f32 - ref).abs().max()) <= 1e-4  # float32 keeps parity
    tok, pooled, _ = fidelity(tiny(batch, lay, precision="bfloat16").double(), ref)
    assert tok >= TOKEN_COS and pooled >= POOLED_COS, (tok, pooled)


def test_bfloat16_plain_and_packed_linear_paths_agree(tiny, batch, monkeypatch):
    """The oneDNN packed path (when torch has it) and the plain F.linear path give the same bounds."""
    lay = s2_layout(288, 16)
    ref = tiny(batch[:1], lay)
    packed = tiny(batch[:1], lay, precision="bfloat16")
    monkeypatch.setattr(accel, "_ONEDNN_OK", (False, "plain bfloat16 linear (test)"))
    tiny.clear_caches()
    try:
        plain = tiny(batch[:1], lay, precision="bfloat16")
        assert all(not rb.qkv.packed for rb in tiny.reduced_weights(torch.bfloat16))
    finally:
        monkeypatch.undo()
        tiny.clear_caches()
    for out in (packed, plain):
        tok, pooled, _ = fidelity(out, ref)
        assert tok >= TOKEN_COS and pooled >= POOLED_COS
    assert float((packed - plain).abs().max()) < 0.2


def test_bfloat16_intermediates_do_not_alias(tiny, batch):
    lay = s2_layout(288, 16)
    inter = {}
    out = tiny(batch[:1], lay, precision="bfloat16", intermediates=inter)
    layers = inter["tokens_per_layer"]
    assert len(layers) == 12 and torch.equal(layers[-1], out)
    assert not torch.equal(layers[0], layers[1])
    assert not torch.equal(inter["tokens_embed"], layers[0])


def test_reduced_weights_follow_the_state(tiny, batch):
    """Loading other weights drops the cast copies: a stale bfloat16 copy would give the old model."""
    enc = seeded_tiny(0)
    lay = s2_layout(288, 16)
    first = enc(batch[:1], lay, precision="bfloat16")
    enc.load_state_dict(seeded_tiny(1).state_dict())
    again = enc(batch[:1], lay, precision="bfloat16")
    ref = enc(batch[:1], lay)
    assert fidelity(again, ref)[0] >= TOKEN_COS
    assert not torch.allclose(first, again)


def test_unknown_encoder_precision_refused(tiny, batch):
    with pytest.raises(ThorConfigError, match="float32, bfloat16, float16"):
        tiny(batch[:1], s2_layout(288, 16), precision="int8")


# ---- precision resolution ----------------------------------------------------------------------


def test_cpu_bf16_detection_from_cpuinfo():
    assert accel.cpu_bf16_native(AVX512_BF16) == (True, "AVX512-BF16")
    assert accel.cpu_bf16_native(AMX) == (True, "AMX-BF16")
    assert accel.cpu_bf16_native(PLAIN)[0] is False
    assert accel.cpu_bf16_native("")[0] is False


@pytest.mark.parametrize("cpu,expected", [((True, "AVX512-BF16"), "bfloat16"), ((False, "no AVX512-BF16 or AMX"),
                                                                                "float32")])
def test_auto_on_cpu_is_bf16_only_with_native_support(cpu, expected):
    p, why = accel.resolve_precision("auto", "cpu", cpu_bf16=cpu)
    assert p == expected and "auto" in why and cpu[1] in why


def test_float32_default_and_explicit_choices():
    assert ModelSpec().precision == "float32"
    assert accel.resolve_precision("float32", "cpu", cpu_bf16=(True, "AMX-BF16"))[0] == "float32"
    assert accel.resolve_precision("bfloat16", "cpu", cpu_bf16=(True, "AMX-BF16"))[0] == "bfloat16"
    p, why = accel.resolve_precision("bfloat16", "cpu", cpu_bf16=(False, "no AVX512-BF16 or AMX"))
    assert p == "bfloat16" and "slower" in why


def test_float16_refused_on_cpu_with_a_clear_message():
    with pytest.raises(ThorConfigError, match="GPU only") as ei:
        accel.resolve_precision("float16", "cpu", cpu_bf16=(True, "AVX512-BF16"))
    assert "bfloat16" in str(ei.value) and "float32" in str(ei.value)


def test_gpu_precision_choices_with_faked_support():
    """Decision logic only (faked bf16 support), not a GPU run."""
    assert accel.resolve_precision("auto", "cuda", cuda_bf16=lambda: True)[0] == "bfloat16"
    assert accel.resolve_precision("auto", "cuda:1", cuda_bf16=lambda: False)[0] == "float16"
    assert accel.resolve_precision("float16", "cuda", cuda_bf16=lambda: False)[0] == "float16"
    with pytest.raises(ThorConfigError, match="use float16"):
        accel.resolve_precision("bfloat16", "cuda", cuda_bf16=lambda: False)
    assert accel.resolve_precision("auto", "mps")[0] == "float16"
    assert accel.resolve_precision("float16", "mps")[0] == "float16"


def test_precision_spec_validation_and_env():
    assert PRECISIONS == ("float32", "bfloat16", "float16", "auto")
    with pytest.raises(ThorConfigError, match="float32, bfloat16, float16 or auto"):
        ModelSpec(precision="fp8")
    assert ModelSpec(precision=" BFloat16 ").precision == "bfloat16"
    spec, src = model_spec_from_env({"RS_EMBED_THOR_PRECISION": "auto"})
    assert spec.precision == "auto" and src["precision"] == "env:RS_EMBED_THOR_PRECISION"
    spec, src = model_spec_from_env({"RS_EMBED_THOR_PRECISION": "auto"}, precision="float32")
    assert spec.precision == "float32" and src["precision"] == "explicit"
    cfg = resolved_config(ModelSpec(precision="bfloat16"), OutputSpec())
    assert json.loads(json.dumps(cfg))["model"]["precision"] == "bfloat16"


# ---- devices (faked availability: decision logic, not a device run) -------------------------------


def test_auto_device_prefers_cuda_then_mps_then_cpu():
    yes, no = (lambda: True), (lambda: False)
    assert accel.resolve_device("auto", cuda=yes, mps=yes) == "cuda"
    assert accel.resolve_device("auto", cuda=no, mps=yes) == "mps"
    assert accel.resolve_device("auto", cuda=no, mps=no) == "cpu"
    assert accel.resolve_device("mps", cuda=no, mps=yes) == "mps"
    assert accel.resolve_device("cuda:1", cuda=yes, mps=no) == "cuda:1"


def test_unavailable_devices_are_clear_errors():
    no = lambda: False  # noqa: E731
    with pytest.raises(ThorBackendError, match="no CUDA GPU"):
        accel.resolve_device("cuda", cuda=no, mps=no)
    with pytest.raises(ThorBackendError, match="Apple Silicon") as ei:
        accel.resolve_device("mps", cuda=no, mps=no)
    assert "device = cpu" in str(ei.value)
    with pytest.raises(ThorConfigError, match="auto, cpu, cuda, mps"):
        accel.resolve_device("tpu")


def test_missing_mps_operation_is_explained(monkeypatch):
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    exc = NotImplementedError("The operator 'aten::foo' is not currently implemented for the MPS device.")
    clear = accel.mps_op_error(exc)
    assert isinstance(clear, ThorBackendError)
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1" in str(clear) and "aten::foo" in str(clear)
    assert accel.mps_op_error(RuntimeError("shape mismatch")) is None


# ---- batch size --------------------------------------------------------------------------------


def test_auto_batch_size_from_free_gpu_memory():
    """With a given amount of free memory (no GPU involved): more memory, more tiles, within 1..64."""
    args = dict(num_tokens=405, embed_dim=768, image_size=288)
    per = accel.tile_bytes(405, 768, 288, "float32")
    assert accel.tile_bytes(405, 768, 288, "bfloat16") < per
    n, why = accel.auto_batch_size("cuda", free_bytes=10 * per, **args)
    assert n == 5 and "free GPU memory" in why
    assert accel.auto_batch_size("cuda", free_bytes=0, **args)[0] == 1
    assert accel.auto_batch_size("cuda", free_bytes=10 ** 13, **args)[0] == accel.MAX_AUTO_BATCH
    assert accel.auto_batch_size("cpu", free_bytes=10 ** 13, **args)[0] == accel.DEFAULT_BATCH_SIZE
    assert accel.auto_batch_size("mps", **args)[0] == accel.DEFAULT_BATCH_SIZE


def test_batch_size_zero_means_auto():
    assert ModelSpec().batch_size == 0
    assert ModelSpec(batch_size="auto").batch_size == 0
    assert ModelSpec(batch_size=8).batch_size == 8
    with pytest.raises(ThorConfigError, match="positive integer, or 0 for automatic"):
        ModelSpec(batch_size=-2)


# ---- the Embedder records and says the precision -------------------------------------------------


def _raw(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 10001, (n, 10, 288, 288)).astype(np.float32)


def test_embedder_records_and_logs_precision():
    from thor_qgis.embedder import Embedder

    logs = []
    spec = ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu", precision="bfloat16")
    emb = Embedder(spec, log=logs.append)
    md = emb.metadata
    assert md["precision"] == "bfloat16" and md["precision_requested"] == "bfloat16"
    assert "bfloat16 linear layers and attention" in md["matmul_precision"]
    assert md["batch_size"] == accel.DEFAULT_BATCH_SIZE  # auto on a CPU
    assert any(m.startswith("THOR precision: bfloat16") for m in logs)
    f32 = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu", batch_size=2))
    assert f32.metadata["precision"] == "float32" and f32.batch_size == 2
    assert "full precision" in f32.metadata["matmul_precision"]
    raw = _raw()
    a, b = f32.pooled(raw), emb.pooled(raw)
    assert a.dtype == b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= POOLED_COS
    grid = emb.grid(raw)
    assert grid.dtype == np.float32 and grid.shape == (2, 192, 18, 18)


def test_embedder_refuses_float16_on_cpu():
    from thor_qgis.embedder import Embedder

    with pytest.raises(ThorConfigError, match="GPU only"):
        Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu", precision="float16"))


def test_auto_precision_on_this_cpu_follows_its_flags():
    from thor_qgis.embedder import Embedder

    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu", precision="auto"))
    native, _ = accel.cpu_bf16_native()
    assert emb.metadata["precision"] == ("bfloat16" if native else "float32")
    assert emb.metadata["precision_requested"] == "auto"


# ---- GPU and MPS: only where the device is (these skip here) --------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
needs_mps = pytest.mark.skipif(not accel.mps_available(), reason="no Apple MPS on this machine")


@needs_cuda
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_cuda_reduced_precision_within_bounds(tiny, batch, precision):
    if precision == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    enc = seeded_tiny(0).to("cuda")
    lay = s2_layout(288, 16)
    ref = tiny(batch, lay)
    out = enc(batch.to("cuda"), lay, precision=precision).cpu()
    tok, pooled, _ = fidelity(out, ref)
    assert out.dtype == torch.float32 and tok >= TOKEN_COS and pooled >= POOLED_COS


@needs_cuda
def test_cuda_embedder_auto_batch_and_pinned_input():
    from thor_qgis.embedder import Embedder

    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cuda", precision="auto"))
    assert 1 <= emb.batch_size <= accel.MAX_AUTO_BATCH
    ref = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu", batch_size=2))
    raw = _raw()
    a, b = ref.pooled(raw), emb.pooled(raw)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= POOLED_COS


@needs_mps
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_mps_runs_within_bounds(tiny, batch, precision):
    enc = seeded_tiny(0).to("mps")
    lay = s2_layout(288, 16)
    ref = tiny(batch, lay)
    out = enc(batch.to("mps"), lay, precision=precision).cpu()
    tok, pooled, _ = fidelity(out, ref)
    if precision == "float32":
        assert float((out - ref).abs().max()) <= 1e-3
    assert tok >= TOKEN_COS and pooled >= POOLED_COS


def test_memory_estimate_counts_an_automatic_batch_as_four():
    from thor_qgis.limits import estimate_model

    auto = estimate_model(ModelSpec(model_key="thor_v1_base"))
    assert auto.batch_size == 4
    assert auto.memory_gib == estimate_model(ModelSpec(model_key="thor_v1_base", batch_size=4)).memory_gib
