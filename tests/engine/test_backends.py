"""backends: selection (auto → builtin here, terratorch absent → clear error), device
resolution, the terratorch adapter's plumbing against a stand-in package, and builtin vs real
terratorch parity where terratorch + thor_terratorch_ext are installed."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from thor_qgis import backends
from thor_qgis.backends import (TERRATORCH_MODEL_BANDS, resolve_backend, resolve_device, terratorch_installed,
                                terratorch_status)
from thor_qgis.errors import ThorBackendError, ThorConfigError
from thor_qgis.specs import ModelSpec

REAL_TT = terratorch_installed() and terratorch_status()[0]


@pytest.fixture
def fresh_status(monkeypatch):
    monkeypatch.setattr(backends, "_TT_STATUS", None)
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("terratorch", "thor_terratorch_ext")]:
        if "fake_tt" in str(getattr(sys.modules[name], "__file__", "")):
            del sys.modules[name]


@pytest.mark.skipif(REAL_TT, reason="terratorch is installed here")
def test_auto_is_builtin_without_terratorch(fresh_status):
    assert resolve_backend("auto") == "builtin"
    assert resolve_backend("builtin") == "builtin"


@pytest.mark.skipif(REAL_TT, reason="terratorch is installed here")
def test_terratorch_absent_is_a_clear_error(fresh_status, tiny_ckpt, clean_model_cache):
    with pytest.raises(ThorBackendError) as ei:
        resolve_backend("terratorch")
    msg = str(ei.value)
    assert "terratorch" in msg and "thor_terratorch_ext" in msg and "backend = builtin" in msg
    from thor_qgis.embedder import Embedder

    with pytest.raises(ThorBackendError, match="thor_terratorch_ext"):
        Embedder(ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt),
                           backend="terratorch"))


def test_invalid_backend_and_device():
    with pytest.raises(ThorConfigError, match="auto, builtin, terratorch"):
        resolve_backend("onnx")
    with pytest.raises(ThorConfigError, match="auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    from thor_qgis.accel import mps_available

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ThorBackendError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_embedder_on_cuda_when_available(tiny_ckpt, raw_input, reference, clean_model_cache):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    from thor_qgis.embedder import Embedder

    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt),
                             device="cuda"))
    tok = emb.tokens(raw_input)
    assert tok.device.type == "cpu"
    assert float(np.abs(tok.numpy() - reference["tokens_last"]).max()) < 1e-4


# ---- stand-in terratorch: checks what the adapter passes and how it reads the result ---------

_FAKE_REGISTRY = textwrap.dedent('''
    """Stand-in for terratorch.registry + thor_terratorch_ext (tests only). Builds a wrapper
    that answers like THOREncoderWrapper: ([last-block tokens], channel_params), .groups."""
    import torch
    from torch import nn

    CALLS = []

    _NAMES = {"BLUE": "S2:Blue", "GREEN": "S2:Green", "RED": "S2:Red", "RED_EDGE_1": "S2:RE1",
              "RED_EDGE_2": "S2:RE2", "RED_EDGE_3": "S2:RE3", "NIR_BROAD": "S2:NIR",
              "NIR_NARROW": "S2:RE4", "SWIR_1": "S2:SWIR1", "SWIR_2": "S2:SWIR2"}

    class _Wrapper(nn.Module):
        def __init__(self, key, kwargs):
            super().__init__()
            from thor_qgis.encoder import ThorEncoder, s2_layout
            from thor_qgis.weights import load_state_into, read_checkpoint
            self.enc = ThorEncoder(key)
            if kwargs.get("pretrained"):
                load_state_into(self.enc, read_checkpoint(kwargs["ckpt"]), key, kwargs["ckpt"])
            else:
                self.enc.init_random(0)
            gc = kwargs["input_params"]["ground_covers"][0]
            p = kwargs["input_params"]["flexivit_patch_size_seqs"][0]
            self.layout = s2_layout(gc // 10, p)
            self.bands = [_NAMES[b] for b in kwargs["model_bands"]]
            self.groups = {f"group{g.index}": list(g.bands) for g in self.layout.groups}

        def forward(self, x):
            assert torch.get_float32_matmul_precision() == "highest"
            tok = self.enc(x, self.layout)
            cp = {}
            for g in self.layout.groups:
                for b in g.bands:
                    cp[b] = {"GSD": g.gsd, "num_patch": g.side, "patch_size": g.patch_size}
            return [tok], cp

    class _Registry:
        def build(self, name, **kwargs):
            CALLS.append((name, kwargs))
            return _Wrapper(name, kwargs)

    BACKBONE_REGISTRY = _Registry()
''')


def _install_fake(tmp_path, monkeypatch, broken=False):
    root = tmp_path / "fake_tt"
    (root / "terratorch").mkdir(parents=True)
    (root / "thor_terratorch_ext").mkdir()
    init = "import torch\ntorch.set_float32_matmul_precision('medium')  # like the real one\n"
    if broken:
        init += "raise ImportError('torchvision::nms does not exist')\n"
    (root / "terratorch" / "__init__.py").write_text(init)
    (root / "terratorch" / "registry.py").write_text(_FAKE_REGISTRY)
    (root / "thor_terratorch_ext" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))


@pytest.mark.skipif(REAL_TT, reason="the real terratorch is installed here")
def test_terratorch_adapter_plumbing(tmp_path, monkeypatch, fresh_status, tiny_ckpt, raw_input, reference,
                                     clean_model_cache):
    _install_fake(tmp_path, monkeypatch)
    torch.set_float32_matmul_precision("highest")
    assert resolve_backend("auto") == "terratorch"
    assert torch.get_float32_matmul_precision() == "highest"  # the import side effect was undone

    from thor_qgis.embedder import Embedder

    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt),
                             backend="terratorch"))
    assert emb.metadata["backend"] == "terratorch"
    assert emb.metadata["weights"]["source"] == "checkpoint"
    name, kwargs = sys.modules["terratorch.registry"].CALLS[-1]
    assert name == "thor_v1_tiny"
    assert kwargs == {
        "pretrained": True,
        "model_bands": list(TERRATORCH_MODEL_BANDS),
        "out_indices": [-1],
        "return_channel_params": True,
        "input_params": {"ground_covers": [2880], "flexivit_patch_size_seqs": [16]},
        "ckpt": str(tiny_ckpt),
    }
    torch.set_float32_matmul_precision("medium")
    tok = emb.tokens(raw_input)
    assert torch.get_float32_matmul_precision() == "medium"
    assert float(np.abs(tok.numpy() - reference["tokens_last"]).max()) < 1e-4
    assert emb._backend.sides == (18, 9)
    g = emb.grid(raw_input, "concat")
    assert float(np.abs(g - reference["grid_concat"]).max()) < 1e-4
    assert emb.grid_info("mean")["grid_kind"] == "group_aware"


@pytest.mark.skipif(REAL_TT, reason="the real terratorch is installed here")
def test_terratorch_validates_the_checkpoint_first(tmp_path, monkeypatch, fresh_status, tiny_ckpt,
                                                   clean_model_cache):
    from thor_qgis.embedder import Embedder
    from thor_qgis.errors import ThorWeightsError

    _install_fake(tmp_path, monkeypatch)
    with pytest.raises(ThorWeightsError, match="looks like thor_v1_tiny"):
        Embedder(ModelSpec(model_key="thor_v1_small", weights="checkpoint", checkpoint=str(tiny_ckpt),
                           backend="terratorch"))
    assert sys.modules["terratorch.registry"].CALLS == []


@pytest.mark.skipif(REAL_TT, reason="the real terratorch is installed here")
def test_auto_falls_back_when_terratorch_does_not_import(tmp_path, monkeypatch, fresh_status):
    _install_fake(tmp_path, monkeypatch, broken=True)
    torch.set_float32_matmul_precision("highest")
    logs = []
    assert resolve_backend("auto", log=logs.append) == "builtin"
    assert torch.get_float32_matmul_precision() == "highest"
    assert logs and "torchvision::nms" in logs[0]
    with pytest.raises(ThorBackendError, match="import failed"):
        resolve_backend("terratorch")


# ---- the real official stack -----------------------------------------------------------------


def test_builtin_vs_terratorch_parity(tiny_ckpt, raw_input, reference, clean_model_cache):
    pytest.importorskip("terratorch")
    pytest.importorskip("thor_terratorch_ext")
    if not REAL_TT:
        pytest.skip("terratorch / thor_terratorch_ext do not import here")
    from thor_qgis.embedder import Embedder

    spec = dict(model_key="thor_v1_tiny", weights="checkpoint", checkpoint=str(tiny_ckpt), device="cpu")
    tt = Embedder(ModelSpec(backend="terratorch", **spec))
    bi = Embedder(ModelSpec(backend="builtin", **spec))
    t_tt, t_bi = tt.tokens(raw_input), bi.tokens(raw_input)
    assert t_tt.shape == t_bi.shape == (2, 405, 192)
    assert float((t_tt - t_bi).abs().max()) < 1e-4
    assert float(np.abs(t_tt.numpy() - reference["tokens_last"]).max()) < 1e-4
    for merge in ("mean", "sum", "concat"):
        assert float(np.abs(tt.grid(raw_input, merge) - reference[f"grid_{merge}"]).max()) < 1e-4
