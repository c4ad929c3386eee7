"""Shared fixtures of the engine tests (plain pytest, no QGIS).

The reference fixtures live outside the plugin, in ``$THOR_SHARED_DIR/thor/fixtures`` (default:
``<repo>/../shared/thor/fixtures``). Tests that need them are skipped, with the reason, when
they are absent; the shipped code never reads them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("THOR_SHARED_DIR", str(REPO.parent / "shared")))
FIXTURES = SHARED / "thor" / "fixtures"
CKPT_NAME = "thor_v1_tiny_fixture_hubformat.pt"
RAW_NAME = "s2_raw_2x10x288x288.npy"
OUTPUTS_NAME = "thor_v1_tiny_fixture_outputs_p16.npz"


def _need(name: str) -> Path:
    p = FIXTURES / name
    if not p.is_file():
        msg = f"THOR reference fixture {p} not found (set THOR_SHARED_DIR to the folder holding thor/fixtures)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # in CI the fixtures are there: their absence is a failure, not a skip
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    return _need(CKPT_NAME)


@pytest.fixture(scope="session")
def raw_path() -> Path:
    return _need(RAW_NAME)


@pytest.fixture(scope="session")
def outputs_path() -> Path:
    return _need(OUTPUTS_NAME)


@pytest.fixture(scope="session")
def raw_input() -> np.ndarray:
    return np.load(_need(RAW_NAME))


@pytest.fixture(scope="session")
def reference() -> dict:
    with np.load(_need(OUTPUTS_NAME)) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def tiny_state(tiny_ckpt):
    """The fixture checkpoint's raw (hub-format) dict."""
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
