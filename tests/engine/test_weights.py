"""weights: checkpoint formats and their errors, hub through a pre-populated HF cache, random
only when asked, the process-wide model cache; all four sizes load from checkpoints."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from thor_qgis.encoder import ThorEncoder
from thor_qgis.errors import ThorWeightsError
from thor_qgis.specs import MODEL_VARIANTS, ModelSpec
from thor_qgis.weights import (MODEL_CACHE, RANDOM_WEIGHTS_WARNING, ModelCache, extract_encoder_state,
                               guess_model_key, load_builtin_encoder, read_checkpoint, sha256_file,
                               validate_checkpoint_file)

REPO = Path(__file__).resolve().parents[2]


def _spec(path, key="thor_v1_tiny", **kw):
    return ModelSpec(model_key=key, weights="checkpoint", checkpoint=str(path), device="cpu", **kw)


def _bare(tiny_state):
    return {k[len("encoder."):]: v for k, v in tiny_state.items()}


def _same_weights(enc, tiny_state):
    own = enc.state_dict()
    return all(torch.equal(own[k[len("encoder."):]], v) for k, v in tiny_state.items())


# ---- formats ---------------------------------------------------------------------------------


def test_hub_format_checkpoint(tiny_ckpt, tiny_state):
    logs = []
    enc, meta, warns = load_builtin_encoder(_spec(tiny_ckpt), log=logs.append)
    assert _same_weights(enc, tiny_state)
    assert meta == {"source": "checkpoint", "path": str(tiny_ckpt),
                    "sha256": hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()}
    assert warns == [] and any("loaded" in m for m in logs)


def test_state_dict_wrapped(tmp_path, fixture_ckpt_wrapped, tiny_state):
    enc, meta, _ = load_builtin_encoder(_spec(fixture_ckpt_wrapped))
    assert _same_weights(enc, tiny_state)
    assert meta["sha256"] == sha256_file(str(fixture_ckpt_wrapped))
    p = tmp_path / "wrapped.pt"  # with more training state beside it
    torch.save({"state_dict": dict(tiny_state), "epoch": 3, "hyper": {"lr": 1e-4}}, p)
    enc, _, _ = load_builtin_encoder(_spec(p))
    assert _same_weights(enc, tiny_state)


def test_bare_keys(fixture_ckpt_bare, tiny_state):
    assert not any(k.startswith("encoder.") for k in torch.load(str(fixture_ckpt_bare), weights_only=True))
    enc, _, _ = load_builtin_encoder(_spec(fixture_ckpt_bare))
    assert _same_weights(enc, tiny_state)


def test_decoder_and_pos_embed_keys_are_ignored(tmp_path, tiny_state):
    sd = dict(tiny_state)
    sd["encoder.decoder_blocks.0.weight"] = torch.zeros(3)
    sd["encoder.decode_head.bias"] = torch.zeros(3)
    sd["encoder.pos_embed.10"] = torch.zeros(5, 5)
    sd["encoder.ref_pos_embed.ref_pos_embed"] = torch.zeros(5, 5)
    sd["decoder.blocks.0.weight"] = torch.zeros(3)  # another top-level module: not the encoder
    sd["mask_token"] = torch.zeros(1)
    p = tmp_path / "with_decoder.pt"
    torch.save(sd, p)
    state = read_checkpoint(str(p))
    assert set(state) == set(_bare(tiny_state))
    enc, _, warns = load_builtin_encoder(_spec(p))
    assert _same_weights(enc, tiny_state) and warns == []


def test_half_precision_checkpoint_is_cast(tmp_path, tiny_state):
    p = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in tiny_state.items()}, p)
    enc, _, _ = load_builtin_encoder(_spec(p))
    w = enc.blocks[0].attn.qkv.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, tiny_state["encoder.blocks.0.attn.qkv.weight"].half().float())


# ---- errors ----------------------------------------------------------------------------------


def test_missing_key(tmp_path, tiny_state):
    sd = dict(tiny_state)
    del sd["encoder.blocks.3.mlp.fc2.bias"]
    del sd["encoder.ind_patch_embed.patch_embed.S3:S9_BT_in.weight"]
    p = tmp_path / "missing.pt"
    torch.save(sd, p)
    with pytest.raises(ThorWeightsError) as ei:
        load_builtin_encoder(_spec(p))
    msg = str(ei.value)
    assert "lacks 2" in msg and "blocks.3.mlp.fc2.bias" in msg and "S3:S9_BT_in.weight" in msg and str(p) in msg


def test_misshaped_key(tmp_path, tiny_state):
    sd = dict(tiny_state)
    sd["encoder.band_embed.group4"] = torch.zeros(31)
    p = tmp_path / "misshaped.pt"
    torch.save(sd, p)
    with pytest.raises(ThorWeightsError) as ei:
        load_builtin_encoder(_spec(p))
    assert "band_embed.group4 [31] (expected [32])" in str(ei.value)


def test_wrong_size_says_which_size_it_looks_like(tiny_ckpt):
    with pytest.raises(ThorWeightsError) as ei:
        load_builtin_encoder(_spec(tiny_ckpt, key="thor_v1_base"))
    msg = str(ei.value)
    assert "looks like thor_v1_tiny" in msg and "not thor_v1_base" in msg
    assert guess_model_key(read_checkpoint(str(tiny_ckpt)))[0] == "thor_v1_tiny"


def test_not_a_thor_checkpoint(tmp_path):
    p = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(2, 8)}, p)
    with pytest.raises(ThorWeightsError, match="does not look like a THOR v1 encoder"):
        load_builtin_encoder(_spec(p))


def test_unreadable_file(tmp_path):
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ThorWeightsError) as ei:
        load_builtin_encoder(_spec(p))
    assert str(p) in str(ei.value) and "could not read" in str(ei.value)


def test_nonexistent_file(tmp_path):
    p = tmp_path / "nope.pt"
    with pytest.raises(ThorWeightsError) as ei:
        load_builtin_encoder(_spec(p))
    assert str(p) in str(ei.value) and "not found" in str(ei.value)
    with pytest.raises(ThorWeightsError, match="folder"):
        load_builtin_encoder(_spec(tmp_path))


def test_no_tensors(tmp_path):
    p = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, p)
    with pytest.raises(ThorWeightsError, match="no THOR encoder weights"):
        read_checkpoint(str(p))
    with pytest.raises(ThorWeightsError, match="does not hold a state dict"):
        extract_encoder_state([1, 2, 3], "x.pt")


def test_validate_checkpoint_file_without_real_weights(tiny_ckpt):
    assert validate_checkpoint_file(str(tiny_ckpt), "thor_v1_tiny") == []
    with pytest.raises(ThorWeightsError, match="looks like thor_v1_tiny"):
        validate_checkpoint_file(str(tiny_ckpt), "thor_v1_large")


# ---- random only when asked ------------------------------------------------------------------


def test_random_only_when_asked(tmp_path, clean_model_cache):
    from thor_qgis.embedder import Embedder

    logs = []
    emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu"), log=logs.append)
    md = emb.metadata
    assert md["weights"] == {"source": "random", "warning": RANDOM_WEIGHTS_WARNING}
    assert RANDOM_WEIGHTS_WARNING in md["warnings"]
    assert any("RANDOM" in m for m in logs)
    logs.clear()
    again = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="random", device="cpu"), log=logs.append)
    assert again._backend.encoder is emb._backend.encoder
    assert any("RANDOM" in m for m in logs)  # repeated on a cache hit
    # deterministic
    e1, _, _ = load_builtin_encoder(ModelSpec(model_key="thor_v1_tiny", weights="random"))
    e2, _, _ = load_builtin_encoder(ModelSpec(model_key="thor_v1_tiny", weights="random"))
    assert torch.equal(e1.blocks[5].mlp.fc1.weight, e2.blocks[5].mlp.fc1.weight)
    # a failing checkpoint never falls back to random
    with pytest.raises(ThorWeightsError):
        Embedder(_spec(tmp_path / "missing.pt"))


# ---- hub -------------------------------------------------------------------------------------

_HUB_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from thor_qgis.embedder import Embedder
    from thor_qgis.errors import ThorWeightsError
    from thor_qgis.specs import ModelSpec
    try:
        emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="hub", device="cpu"))
    except ThorWeightsError as exc:
        print(json.dumps({"error": str(exc)}))
        raise SystemExit(0)
    x = np.load(sys.argv[2])
    v = emb.pooled(x, "mean")
    ref = np.load(sys.argv[3])["pooled_mean"]
    print(json.dumps({"metadata": emb.metadata, "err": float(np.abs(v - ref).max())}))
""")


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _run_hub(tmp_path, ckpt, raw_path, out_path, endpoint=None):
    """Run an Embedder with weights=hub in a fresh interpreter (huggingface_hub reads its cache
    location and offline flag at import) against an HF cache under tmp_path, offline."""
    hub = tmp_path / "hf_home" / "hub"
    hub.mkdir(parents=True)
    if ckpt is not None:
        repo_dir = hub / "models--FM4CS--THOR-1.0-tiny"
        snap = repo_dir / "snapshots" / HUB_COMMIT
        snap.mkdir(parents=True)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(HUB_COMMIT)
        (snap / "thor_v1_vit_tiny.pt").write_bytes(Path(ckpt).read_bytes())  # the seeded checkpoint, renamed
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("HF_") or k.startswith("HUGGINGFACE"):
            del env[k]
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1"})
    if endpoint is not None:  # online mode, against a local stand-in of the Hub
        del env["HF_HUB_OFFLINE"]
        env["HF_ENDPOINT"] = endpoint
        env["NO_PROXY"] = "127.0.0.1,localhost"
    env.pop("RS_EMBED_THOR_CKPT", None)
    script = tmp_path / "hub_run.py"
    script.write_text(_HUB_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(REPO), str(raw_path), str(out_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_hub_from_prepopulated_cache(tmp_path, tiny_ckpt, raw_path, outputs_path):
    out = _run_hub(tmp_path, tiny_ckpt, raw_path, outputs_path)
    assert "error" not in out, out
    md = out["metadata"]
    assert md["weights"] == {"source": "hub", "repo": "FM4CS/THOR-1.0-tiny", "file": "thor_v1_vit_tiny.pt",
                             "revision": HUB_COMMIT}
    assert md["warnings"] == []
    assert out["err"] < 1e-4  # the cached file's weights were used


def test_hub_cached_checkpoint_is_used_without_asking_the_hub(tmp_path, tiny_ckpt, raw_path, outputs_path):
    """Online mode with the file cached: no request reaches the Hub (which, with no network, would
    cost a run about 20 s of retries)."""
    import http.server
    import threading

    requests = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            requests.append(self.path)
            self.send_response(500)
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = _run_hub(tmp_path, tiny_ckpt, raw_path, outputs_path,
                       endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert "error" not in out, out
    assert out["err"] < 1e-4
    assert requests == []


def test_hub_offline_not_cached_error(tmp_path):
    out = _run_hub(tmp_path, None, "unused", "unused")
    msg = out["error"]
    assert "FM4CS/THOR-1.0-tiny/thor_v1_vit_tiny.pt" in msg
    assert "not in this computer's Hugging Face cache" in msg and "offline mode" in msg
    assert "'Local checkpoint' (CHECKPOINT)" in msg and "RS_EMBED_THOR_CKPT" in msg


# ---- model cache ----------------------------------------------------------------------------


def test_cache_reuses_the_loaded_model(tiny_ckpt, clean_model_cache):
    from thor_qgis.embedder import Embedder

    logs = []
    a = Embedder(_spec(tiny_ckpt))
    b = Embedder(_spec(tiny_ckpt, batch_size=2), log=logs.append)  # batch size is not part of the key
    assert a._backend.encoder is b._backend.encoder
    assert any("reused" in m for m in logs)
    c = Embedder(_spec(tiny_ckpt, patch_size=8))
    assert c._backend.encoder is not a._backend.encoder
    assert len(MODEL_CACHE) == 2
    keys = MODEL_CACHE.keys()
    assert {k[3] for k in keys} == {16, 8}
    assert all(k[0] == "thor_v1_tiny" and k[1][0] == "checkpoint" and k[2] == "cpu" and k[4] == "builtin"
               for k in keys)
    assert keys[0][1][2] == sha256_file(str(tiny_ckpt))


def test_cache_key_follows_file_content(tmp_path, tiny_state, clean_model_cache):
    from thor_qgis.embedder import Embedder

    p = tmp_path / "ck.pt"
    torch.save(tiny_state, p)
    a = Embedder(_spec(p))
    sd = dict(tiny_state)
    sd["encoder.norm.bias"] = sd["encoder.norm.bias"] + 1
    time.sleep(0.01)
    torch.save(sd, p)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    b = Embedder(_spec(p))
    assert a._backend.encoder is not b._backend.encoder
    assert a.metadata["weights"]["sha256"] != b.metadata["weights"]["sha256"]


def test_cache_is_thread_safe():
    cache = ModelCache(max_entries=2)
    calls = []

    def factory():
        calls.append(1)
        time.sleep(0.05)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_create(("k",), factory)[0]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1
    cache.get_or_create(("a",), object)
    cache.get_or_create(("b",), object)
    assert cache.keys() == [("a",), ("b",)]  # LRU bound


# ---- all four sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(MODEL_VARIANTS))
def test_every_size_loads_from_a_checkpoint_of_its_shapes(tmp_path, key):
    v = MODEL_VARIANTS[key]
    with torch.device("meta"):
        skeleton = ThorEncoder(key)
    # synthesise a hub-format checkpoint of the right shapes (half precision keeps large at ~0.6 GB)
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for k, t in skeleton.state_dict().items():
        sd["encoder." + k] = (torch.randn(t.shape, generator=gen, dtype=torch.float32).half()
                              if t.numel() < 1_000_000 else torch.zeros(t.shape, dtype=torch.float16))
    p = tmp_path / f"{key}.pt"
    torch.save(sd, p)
    del sd
    enc, meta, _ = load_builtin_encoder(_spec(p, key=key))
    n_params = sum(t.numel() for t in enc.parameters())
    expected = {"thor_v1_tiny": 7.6e6, "thor_v1_small": 25.8e6, "thor_v1_base": 94.1e6, "thor_v1_large": 314.4e6}
    assert n_params == pytest.approx(expected[key], rel=0.01)
    assert len(enc.blocks) == v.depth and enc.embed_dim == v.embed_dim
    assert enc.blocks[0].attn.qkv.weight.shape == (3 * v.embed_dim, v.embed_dim)
    assert enc.band_embed["group9"].shape == (v.group_embed_dim,)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in enc.state_dict().values())
    assert meta["source"] == "checkpoint"
    del enc
    p.unlink()
