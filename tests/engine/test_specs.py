"""specs: validation messages name the allowed values; env defaults; explicit values win."""
from __future__ import annotations

import pytest

from thor_qgis.errors import ThorConfigError
from thor_qgis.specs import (MODEL_VARIANTS, NORMALIZATIONS, S2_BANDS, ModelSpec, OutputSpec, SensorSpec,
                             TemporalSpec, default_group_merge, model_spec_from_env, resolved_config)


def test_defaults():
    m = ModelSpec()
    assert (m.model_key, m.weights, m.image_size, m.patch_size, m.normalization) == (
        "thor_v1_base", "hub", 288, 16, "thor_stats")
    assert m.grid_side() == 18
    assert m.ground_cover_m(10.0) == 2880
    assert m.variant.embed_dim == 768


def test_variant_dims_match_spec():
    dims = {k: (v.embed_dim, v.depth, v.num_heads, v.head_dim, v.patch_size_embed_dim, v.group_embed_dim)
            for k, v in MODEL_VARIANTS.items()}
    assert dims == {
        "thor_v1_tiny": (192, 12, 3, 64, 160, 32),
        "thor_v1_small": (384, 12, 6, 64, 320, 64),
        "thor_v1_base": (768, 12, 12, 64, 640, 128),
        "thor_v1_large": (1024, 24, 16, 64, 768, 256),
    }
    for v in MODEL_VARIANTS.values():
        assert v.hub_repo.startswith("FM4CS/THOR-1.0-") and v.hub_file.endswith(".pt")


def test_invalid_model_key_names_allowed():
    with pytest.raises(ThorConfigError) as ei:
        ModelSpec(model_key="thor_v2_huge")
    msg = str(ei.value)
    for k in MODEL_VARIANTS:
        assert k in msg
    assert "thor_v2_huge" in msg


@pytest.mark.parametrize("field,value,allowed", [
    ("normalization", "zscore", NORMALIZATIONS),
    ("device", "tpu", ("auto", "cpu", "cuda")),
    ("backend", "onnx", ("auto", "builtin", "terratorch")),
    ("weights", "s3", ("hub", "checkpoint", "random")),
])
def test_invalid_choice_names_allowed(field, value, allowed):
    with pytest.raises(ThorConfigError) as ei:
        ModelSpec(**{field: value})
    msg = str(ei.value)
    assert value in msg
    for a in allowed:
        assert a in msg


def test_output_spec_invalid_names_allowed():
    with pytest.raises(ThorConfigError, match="mean, sum or concat"):
        OutputSpec(group_merge="median")
    with pytest.raises(ThorConfigError, match="mean or max"):
        OutputSpec(pooling="min")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"patch_size": 0}, "positive integer"),
    ({"image_size": 300}, "multiple of 32"),
    ({"image_size": 289}, "even"),
    ({"batch_size": -1}, "positive integer"),
    ({"weights": "checkpoint"}, "path"),
    ({"weights": "hub", "checkpoint": "/x.pt"}, "weights = checkpoint"),
])
def test_invalid_values(kwargs, fragment):
    with pytest.raises(ThorConfigError, match=fragment):
        ModelSpec(**kwargs)


def test_p8_valid_and_grid_side():
    m = ModelSpec(patch_size=8)
    assert m.grid_side() == 36


def test_sensor_spec_band_order_enforced():
    with pytest.raises(ThorConfigError) as ei:
        SensorSpec(bands=("B4", "B3", "B2"))
    assert " ".join(S2_BANDS) in str(ei.value)


def test_temporal_spec_order():
    with pytest.raises(ThorConfigError, match="before"):
        TemporalSpec("2024-06-01", "2024-01-01")


def test_env_defaults():
    env = {"RS_EMBED_THOR_MODEL_KEY": "thor_v1_tiny", "RS_EMBED_THOR_IMG": "320", "RS_EMBED_THOR_PATCH_SIZE": "8",
           "RS_EMBED_THOR_NORMALIZE": "unit_scale", "RS_EMBED_THOR_CKPT": "/models/thor.pt"}
    spec, src = model_spec_from_env(env)
    assert (spec.model_key, spec.image_size, spec.patch_size, spec.normalization) == (
        "thor_v1_tiny", 320, 8, "unit_scale")
    assert (spec.weights, spec.checkpoint) == ("checkpoint", "/models/thor.pt")
    assert src["model_key"] == "env:RS_EMBED_THOR_MODEL_KEY"
    assert src["weights"] == "env:RS_EMBED_THOR_CKPT"
    assert src["device"] == "default"


def test_env_pretrained_false_means_random():
    spec, src = model_spec_from_env({"RS_EMBED_THOR_PRETRAINED": "false"})
    assert spec.weights == "random"
    assert src["weights"] == "env:RS_EMBED_THOR_PRETRAINED"
    spec, _ = model_spec_from_env({"RS_EMBED_THOR_PRETRAINED": "1"})
    assert spec.weights == "hub"


def test_explicit_wins_over_env():
    env = {"RS_EMBED_THOR_MODEL_KEY": "thor_v1_tiny", "RS_EMBED_THOR_CKPT": "/models/thor.pt",
           "RS_EMBED_THOR_PATCH_SIZE": "8"}
    spec, src = model_spec_from_env(env, model_key="thor_v1_small", weights="hub", patch_size=16)
    assert (spec.model_key, spec.weights, spec.checkpoint, spec.patch_size) == ("thor_v1_small", "hub", None, 16)
    assert src["model_key"] == src["weights"] == src["patch_size"] == "explicit"


def test_empty_env_values_ignored():
    spec, src = model_spec_from_env({"RS_EMBED_THOR_MODEL_KEY": "  ", "RS_EMBED_THOR_CKPT": ""})
    assert spec.model_key == "thor_v1_base" and spec.weights == "hub"
    assert src["model_key"] == "default"


def test_invalid_env_value_is_a_config_error():
    with pytest.raises(ThorConfigError, match="thor_v1_tiny"):
        model_spec_from_env({"RS_EMBED_THOR_MODEL_KEY": "nope"})
    with pytest.raises(ThorConfigError, match="mean, sum or concat"):
        default_group_merge({"RS_EMBED_THOR_GROUP_MERGE": "median"})
    assert default_group_merge({"RS_EMBED_THOR_GROUP_MERGE": "concat"}) == "concat"


def test_resolved_config_is_json_serialisable():
    import json

    cfg = resolved_config(ModelSpec(), OutputSpec(), SensorSpec(), TemporalSpec("2024-01-01", "2024-02-01"))
    json.dumps(cfg)
    assert cfg["ground_cover_m"] == 2880
