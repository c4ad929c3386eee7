"""The real thing, once: the headless installer, run with the system Python (no venv), installs the CPU build of
torch, earthengine-api and huggingface_hub into a temporary THOR_DEPS_DIR; qgis_process without the venv then
runs the grid algorithm with them.

Where the pinned CPU build cannot be had for the system Python (Debian 13's Python 3.13 with PyTorch's index out
of reach: PyPI has no CPU builds), the installer must say so and point to the 'system' build; the module then goes
on with that build, which keeps the distribution's torch (python3-torch) and installs the rest, as a user there
would. The installation is made once for the module (about 2 minutes and 1 GB here with torch, 10 s without)."""
import json
import os
import subprocess
import time

import pytest

from tests.conftest import ROOT, run_qgis_process
from tests.helpers import read_raster

SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.slow


def _system_env(**extra):
    env = dict(os.environ)
    for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(k, None)
    env.update(extra)
    return env


def _install(target, build):
    return subprocess.run([SYSTEM_PYTHON, "-m", "thor_qgis.deps", "install", "--target", str(target), "--torch", build],
                          cwd=ROOT, env=_system_env(), capture_output=True, text=True, timeout=1800)


def _system_torch():
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import torch; print(torch.__version__); print(torch.__file__)"],
                       env=_system_env(), capture_output=True, text=True, timeout=300)
    return r.stdout.split() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("thor_deps") / "py"
    t0 = time.monotonic()
    r = _install(target, "cpu")
    build = "cpu"
    if r.returncode != 0 and "error: no torch==2.13.0+cpu for this Python" in r.stderr:
        # told, with the way out: the next step takes it
        assert "--torch system" in r.stderr and "python3-torch" in r.stderr, r.stderr
        assert not (target / "thor_deps.json").exists()
        if _system_torch() is None:
            pytest.skip("no CPU build of torch 2.13.0 reachable for this Python, and no system torch: "
                        + r.stderr.strip())
        print(f"\nno CPU wheel for this Python here ({r.stderr.strip()[:200]}…): keeping the system torch")
        t0 = time.monotonic()
        r = _install(target, "system")
        build = "system"
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    marker = json.loads((target / "thor_deps.json").read_text())
    site = target / marker["active"]
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\ninstall ({build}): {seconds:.0f} s, {size / 1e6:.0f} MB in {site}")
    return target, site, marker, r.stdout


def test_headless_install_with_the_system_python(installed):
    target, site, marker, out = installed
    assert marker["python_executable"] == SYSTEM_PYTHON
    assert marker["versions"]["ee"] == "1.7.50" and marker["versions"]["huggingface_hub"] == "2.4.0"
    if marker["build"] == "system":
        version, file = _system_torch()
        assert marker["versions"]["torch"] == version and not (site / "torch").exists()
        assert f"keeping torch {version} ({file})" in out
        packages = ("ee", "huggingface_hub")
    else:
        assert marker["build"] == "cpu" and marker["versions"]["torch"] == "2.13.0+cpu"
        packages = ("torch", "ee", "huggingface_hub")
    for pkg in packages:
        assert (site / pkg / "__init__.py").is_file(), pkg
    names = {p.name.lower() for p in site.iterdir()}
    assert not any(n.startswith(("numpy", "osgeo", "gdal")) for n in names)  # QGIS's own stay in use
    assert not any(n.startswith("nvidia") for n in names)  # no CUDA build pulled in
    # packaging tools (torch lists setuptools) would shadow QGIS's pkg_resources from the front of sys.path
    assert not any(n.startswith(("setuptools", "pkg_resources", "_distutils_hack", "distutils-")) for n in names)
    assert "checking the new packages in a separate Python process" in out
    assert not [p for p in target.iterdir() if p.name.startswith(".staging-")]


def test_qgis_process_without_the_venv_uses_the_installed_folder(installed, sample_raster, tmp_path):
    target, site, _marker, _out = installed
    out = tmp_path / "grid.tif"
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"INPUT={sample_raster}", f"OUTPUT={out}",
                         "MODEL_KEY=thor_v1_tiny", "PRETRAINED=false", use_venv=False, hide_system=(),
                         env_extra={"THOR_DEPS_DIR": str(target)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["results"]["BANDS"] == 192
    arr, _gt, _wkt, _ds = read_raster(out)
    assert arr.shape == (192, 36, 36)


def test_report_describes_the_installed_folder(installed):
    target, site, marker, _out = installed
    r = subprocess.run([SYSTEM_PYTHON, "-m", "thor_qgis.deps", "report", "--target", str(target)], cwd=ROOT,
                       env=_system_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    md = r.stdout
    if marker["build"] == "system":
        version, file = _system_torch()
        assert f"| torch | {version} ({file}) |" in md
    else:
        assert f"| torch | 2.13.0+cpu ({site}/torch/__init__.py) |" in md
    assert "| torch build | CPU |" in md and "| torch devices | cpu |" in md
    assert f"| earthengine-api | 1.7.50 ({site}/ee/__init__.py) |" in md
    assert f"- in use: yes, `{site}`" in md
    assert "/usr/lib/python3/dist-packages/numpy" in md  # QGIS's numpy, not a copy
