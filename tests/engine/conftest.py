"""Shared fixtures of the engine tests (plain pytest, no QGIS).

The model is thor_v1_tiny with seeded weights and the input the official stack's reference was computed
on (see :mod:`tests.seeded`); both are made in the session, the reference outputs are in ``tests/data/``.
Nothing outside the repository is read.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import seeded  # noqa: E402
from tests.conftest import FIXTURE_CKPT, FIXTURE_INPUT, FIXTURE_OUTPUTS, need_fixtures  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    """The seeded weights as a hub-format checkpoint (``encoder.``-prefixed keys)."""
    need_fixtures()
    return FIXTURE_CKPT


@pytest.fixture(scope="session")
def raw_path() -> Path:
    need_fixtures()
    return FIXTURE_INPUT


@pytest.fixture(scope="session")
def outputs_path() -> Path:
    return FIXTURE_OUTPUTS


@pytest.fixture(scope="session")
def raw_input() -> np.ndarray:
    need_fixtures()
    return np.load(FIXTURE_INPUT)


@pytest.fixture(scope="session")
def reference() -> dict:
    """The official stack's outputs for the seeded weights and input (tokens_last, grid_*, pooled_*)."""
    with np.load(FIXTURE_OUTPUTS) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def weight_free_reference() -> dict:
    """Official-stack values that depend on neither weights nor input: ALiBi bias, per-group constants."""
    with np.load(seeded.WEIGHT_FREE_NPZ) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def tiny_state(tiny_ckpt):
    """The seeded checkpoint's raw (hub-format) dict, as read back from the file."""
    return torch.load(str(tiny_ckpt), map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def _keep_matmul_precision():
    """Tests change torch's process-wide matmul precision; put it back afterwards."""
    before = torch.get_float32_matmul_precision()
    yield
    try:
        now = torch.get_float32_matmul_precision()
    except Exception:
        now = None
    if now != before:
        torch.set_float32_matmul_precision(before)


@pytest.fixture
def clean_model_cache():
    from thor_qgis.weights import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()
