"""Seeded THOR weights and input: the tests' model, made from a rule rather than read from a file.

The reference outputs in ``tests/data/thor_v1_tiny_seed0_p16_outputs.npz`` were computed by the official
THOR stack (thor 1.0.2 + thor_terratorch_ext 0.2.1 + terratorch 1.2.4, CPU, float32, matmul precision
"highest"; thor_v1_tiny, image 288, patch 16, scale 10 m, batch 2, rs-embed ``thor_stats`` normalisation)
for the weights and the input that this module makes:

* input: ``np.random.default_rng(0).integers(0, 10001, (2, 10, 288, 288)).astype(np.float32)``, bands
  B2 B3 B4 B5 B6 B7 B8 B8A B11 B12;
* weights: one ``np.random.default_rng(seed)`` walks the encoder's keys in a fixed order; the ALiBi slopes
  and the group sincos (``band_embed.group<k>``) keep their fixed values, every other key draws
  ``z = rng.standard_normal(shape)`` and becomes ``0.05 z`` (biases), ``1 + 0.1 z`` (other 1-D keys:
  LayerNorm weights) or ``0.02 z`` (2-D and more), cast to float32.

Both are checked against the sha256 recorded with the reference, so a change of the rule (or of numpy's
generator) shows up as a failed checksum, not as a puzzling parity error. Numpy only: the same arrays feed
the plugin's encoder and any other implementation.
"""
from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
#: Official-stack outputs for the seeded tiny weights and the seeded input (tokens, grids, poolings).
REFERENCE_NPZ = DATA / "thor_v1_tiny_seed0_p16_outputs.npz"
#: Official-stack values that depend on neither weights nor input (ALiBi bias, per-group constant vectors).
WEIGHT_FREE_NPZ = DATA / "thor_v1_tiny_p16_weight_free.npz"

#: sha256 of the drawn arrays (float32 little-endian, concatenated in key order, fixed keys excluded).
SHA256_DRAWN = "583304f3f959ced7eb51043e38de9f7f59b03eabffd563986702a1031d72a995"
#: sha256 over every key, the fixed ones included.
SHA256_FULL = "f6fb27a00141a58d203899c1e0d64f28b4cdd6ffeaf324be6d32ee5392bb275a"
#: sha256 of the seeded input's float32 little-endian bytes.
SHA256_INPUT = "6edddaad6a5a835386490dde70247ae5ec69efae94cd3e886e9b8dd69fcefe67"

# thor_v1_tiny, written out from the model card rather than taken from the plugin's encoder
EMBED_DIM = 192
DEPTH = 12
NUM_HEADS = 3
MLP_HIDDEN = 4 * EMBED_DIM
GROUP_EMBED_DIM = 32
NUM_GROUPS = 10
PATCH = 16

PATCH_EMBED_NAMES: Tuple[str, ...] = (
    ("S2:Red", "S2:Green", "S2:Blue", "S2:NIR", "S2:RE1", "S2:RE2", "S2:RE3", "S2:RE4", "S2:SWIR1", "S2:SWIR2",
     "S2:CoastAerosal", "S2:WaterVapor", "S1:VV", "S1:VH", "S1:HV", "S1:HH")
    + tuple(f"S3:Oa{i:02d}_reflectance" for i in range(1, 22))
    + tuple(f"S3:S{i}_reflectance_an" for i in range(1, 7))
    + ("S3:S7_BT_in", "S3:S8_BT_in", "S3:S9_BT_in")
)
FIXED_PREFIXES = ("encoder_slopes", "band_embed.")


def key_shapes() -> "OrderedDict[str, Tuple[int, ...]]":
    """The tiny encoder's state-dict keys (no ``encoder.`` prefix) and shapes, in the rule's order."""
    d = EMBED_DIM
    ks: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    ks["encoder_slopes"] = (NUM_HEADS,)
    for name in PATCH_EMBED_NAMES:
        ks[f"ind_patch_embed.patch_embed.{name}.weight"] = (d, 1, PATCH, PATCH)
        ks[f"ind_patch_embed.patch_embed.{name}.bias"] = (d,)
    for g in range(NUM_GROUPS):
        ks[f"band_embed.group{g}"] = (GROUP_EMBED_DIM,)
    for b in range(DEPTH):
        pre = f"blocks.{b}."
        for k, shape in (("norm1.weight", (d,)), ("norm1.bias", (d,)),
                         ("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)),
                         ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
                         ("norm2.weight", (d,)), ("norm2.bias", (d,)),
                         ("mlp.fc1.weight", (MLP_HIDDEN, d)), ("mlp.fc1.bias", (MLP_HIDDEN,)),
                         ("mlp.fc2.weight", (d, MLP_HIDDEN)), ("mlp.fc2.bias", (d,))):
            ks[pre + k] = shape
    ks["norm.weight"] = (d,)
    ks["norm.bias"] = (d,)
    return ks


def _alibi_slopes_tiny() -> np.ndarray:
    # ALiBi for 3 heads: the two slopes of a power of two (2^-4, 2^-8), then every other slope of 4 heads
    return np.array([2.0 ** -4, 2.0 ** -8, 2.0 ** -2], dtype=np.float32)


def _group_sincos(group: int) -> np.ndarray:
    # as the official model builds it: frequencies in float32, position x frequency and sin/cos in float64
    # (the plugin's encoder builds them in float64 throughout: up to 6e-8 apart, which the checkpoint's
    # own values replace on loading)
    half = GROUP_EMBED_DIM // 2
    omega = np.arange(half, dtype=np.float32) / np.float32(half)
    omega = (np.float32(1.0) / np.power(np.float32(10000.0), omega)).astype(np.float32)
    arg = float(group) * omega.astype(np.float64)
    return np.concatenate([np.sin(arg), np.cos(arg)]).astype(np.float32)


def _fixed_value(key: str) -> np.ndarray:
    if key == "encoder_slopes":
        return _alibi_slopes_tiny()
    return _group_sincos(int(key[len("band_embed.group"):]))


def is_fixed(key: str) -> bool:
    return key.startswith(FIXED_PREFIXES)


def seeded_state(seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """The seeded tiny encoder state (bare keys, float32 numpy arrays, in the rule's order)."""
    rng = np.random.default_rng(seed)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, shape in key_shapes().items():
        if is_fixed(key):
            out[key] = _fixed_value(key)
            continue
        z = rng.standard_normal(shape)
        if key.endswith(".bias"):
            v = 0.05 * z
        elif len(shape) == 1:
            v = 1.0 + 0.1 * z
        else:
            v = 0.02 * z
        out[key] = v.astype(np.float32)
    return out


def state_sha256(state: Dict[str, np.ndarray], keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(np.ascontiguousarray(state[k], dtype="<f4").tobytes())
    return h.hexdigest()


def check_state(state: Dict[str, np.ndarray]) -> None:
    """Raise AssertionError unless ``state`` is exactly the rule's weights for seed 0."""
    drawn = state_sha256(state, [k for k in state if not is_fixed(k)])
    assert drawn == SHA256_DRAWN, f"seeded weights differ from the rule: sha256 {drawn}"
    full = state_sha256(state, list(state))
    assert full == SHA256_FULL, f"fixed weights (ALiBi slopes, group sincos) differ from the rule: sha256 {full}"


def seeded_input() -> np.ndarray:
    """The reference input [2, 10, 288, 288] float32 (raw digital numbers 0..10000), checked."""
    x = np.random.default_rng(0).integers(0, 10001, (2, 10, 288, 288)).astype(np.float32)
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()
    assert digest == SHA256_INPUT, f"seeded input differs from the reference's: sha256 {digest}"
    return x


def write_checkpoints(folder: Path, seed: int = 0) -> Dict[str, Path]:
    """Write the seeded weights in the three layouts users meet; returns {"hub", "wrapped", "bare"} paths.

    * hub: a flat dict with ``encoder.``-prefixed keys, as the Hugging Face files are;
    * wrapped: ``{"state_dict": <hub dict>, ...}`` as training frameworks save;
    * bare: the encoder's own keys, no prefix.
    """
    import torch

    state = seeded_state(seed)
    check_state(state)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bare = OrderedDict((k, torch.from_numpy(v)) for k, v in state.items())
    hub = OrderedDict(("encoder." + k, v) for k, v in bare.items())
    paths = {"hub": folder / "thor_v1_tiny_seed0_hubformat.pt",
             "wrapped": folder / "thor_v1_tiny_seed0_state_dict.pt",
             "bare": folder / "thor_v1_tiny_seed0_bare.pt"}
    for form, obj in (("hub", hub), ("wrapped", {"state_dict": hub, "epoch": 0}), ("bare", bare)):
        tmp = paths[form].with_suffix(".part")
        torch.save(obj, str(tmp))
        tmp.replace(paths[form])
    return paths


_FOLDER: Optional[Path] = None
#: Held while the session's files are written (pytest may load conftest modules twice under two names;
#: this module is imported once, by name, so the folder and the lock are the process's).
WRITE_LOCK = threading.Lock()


def session_folder() -> Path:
    """One temporary folder per test process for the files made from the rule (removed at exit)."""
    global _FOLDER
    with WRITE_LOCK:
        if _FOLDER is None:
            _FOLDER = Path(tempfile.mkdtemp(prefix="thor-tests-"))
            atexit.register(shutil.rmtree, str(_FOLDER), True)
        return _FOLDER
