"""The dependency installer's plan, folder handling and diagnostics report (no QGIS, no real install here:
tests/qgis/test_deps_install.py installs torch for real)."""
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from thor_qgis import deps, diagnostics

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def _cli(*args, env=None, python=SYSTEM_PYTHON, timeout=300):
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    e.update(env or {})
    return subprocess.run([python, "-m", "thor_qgis.deps", *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_prints_the_plan_and_installs_nothing(tmp_path):
    target = tmp_path / "deps"
    r = _cli("install", "--dry-run", "--target", str(target), "--torch", "cpu")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "dry run: nothing is installed" in out
    assert f"target folder:   {target}" in out
    assert "torch build:     cpu (asked for)" in out
    assert "torch index:     https://download.pytorch.org/whl/cpu" in out
    assert "packages:        torch==2.13.0 earthengine-api==1.7.50 huggingface_hub==2.4.0" in out
    import numpy

    # the build pin, and QGIS's numpy pinned to the version in use
    assert "torch==2.13.0+cpu" in out and f"numpy=={numpy.__version__.split('+')[0]}" in out
    assert not target.exists()


def test_dry_run_auto_follows_the_nvidia_driver(tmp_path):
    """auto: a (stand-in) nvidia-smi reporting driver 570.86 gives the newest CUDA build that driver runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '570.86.10, NVIDIA RTX A4000'\n")
    smi.chmod(0o755)
    r = _cli("install", "--dry-run", "--target", str(tmp_path / "d"),
             env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    # the PyTorch index is unreachable here: the plan says it assumed the usual builds
    assert "torch build:     cu128 (NVIDIA driver 570.86.10 (NVIDIA RTX A4000) runs CUDA 12.8)" in r.stdout
    assert "torch==2.13.0+cu128" in r.stdout and "https://download.pytorch.org/whl/cu128" in r.stdout
    # no driver, and a Python without torch: the CPU build
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    r = _cli("install", "--dry-run", "--target", str(tmp_path / "d"), env={"PATH": "/nonexistent"},
             python=str(bare / "bin" / "python"))
    assert r.returncode == 0, r.stderr
    assert "torch build:     cpu (no NVIDIA driver found (nvidia-smi))" in r.stdout
    # no driver, and a Python whose torch works: nothing to gain from another, it is kept
    import torch

    r = _cli("install", "--dry-run", "--target", str(tmp_path / "d"), env={"PATH": "/nonexistent"},
             python=sys.executable)
    assert (f"torch build:     system (no NVIDIA driver found (nvidia-smi), and torch {torch.__version__} already "
            f"works here ({torch.__file__}): kept)") in r.stdout
    assert "packages:        earthengine-api==1.7.50 huggingface_hub==2.4.0" in r.stdout
    r = _cli("install", "--dry-run", "--torch", "cuda", "--target", str(tmp_path / "d"),
             env={"PATH": "/nonexistent"}, python=sys.executable)
    assert r.returncode == 1 and "no NVIDIA driver found" in r.stderr


@pytest.fixture
def torch_index(tmp_path):
    """A stand-in PyTorch index (its /torch/ page lists the wheels of each build) on 127.0.0.1."""
    root = tmp_path / "whl"
    (root / "torch").mkdir(parents=True)
    cp = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    names = [f"torch-2.13.0%2B{t}-{cp}-{cp}-manylinux_2_28_x86_64.whl" for t in ("cpu", "cu126", "cu129")]
    names.append("torch-2.13.0%2Bcu130-cp399-cp399-manylinux_2_28_x86_64.whl")  # another Python: not offered
    names.append(f"torch-2.12.0%2Bcu130-{cp}-{cp}-manylinux_2_28_x86_64.whl")  # another torch: not offered
    (root / "torch" / "index.html").write_text("".join(f'<a href="/whl/{n}">{n}</a><br>\n' for n in names))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/whl"
    srv.shutdown()


def test_cuda_build_chosen_from_the_index_and_the_driver(torch_index, tmp_path):
    assert deps.available_cuda_tags("2.13.0", torch_index) == ["cu126", "cu129"]
    plan = functools.partial(deps.make_plan, str(tmp_path), system="Linux", machine="x86_64",
                             index_base=torch_index, torch_version="2.13.0")
    p = plan(torch="auto", driver=("576.57", ["GPU"]))
    assert p.build == "cu129" and p.torch_index == torch_index + "/cu129" and "torch==2.13.0+cu129" in p.constraints
    p = plan(torch="auto", driver=("570.10", ["GPU"]))
    assert p.build == "cu126"  # 12.9 needs 575.51.03
    p = plan(torch="auto", driver=("535.0", ["GPU"]), present_torch=None)
    assert p.build == "cpu" and "too old" in p.build_reason
    p = plan(torch="auto", driver=("535.0", ["GPU"]), present_torch={"version": "2.6.0", "file": "/usr/lib/t.py"})
    assert p.build == "system" and p.build_reason.startswith("NVIDIA driver 535.0 too old") and "2.6.0" in p.build_reason
    assert p.kept_torch == {"version": "2.6.0", "file": "/usr/lib/t.py"}  # the installation does not look again
    assert plan(torch="system").kept_torch is None  # chosen, not found: the installation checks it
    p = plan(torch="auto", driver=None, present_torch={"error": "torch 1.13 is older than the 2.1 the plugin needs"})
    assert p.build == "cpu"
    with pytest.raises(deps.DepsError, match="older than any CUDA build"):
        plan(torch="cuda", driver=("535.0", ["GPU"]))
    # Windows drivers have their own numbering: 576.02 is the first for CUDA 12.9 there
    assert deps.make_plan(str(tmp_path), system="Windows", machine="AMD64", torch="cuda", driver=("576.02", []),
                          index_base=torch_index, torch_version="2.13.0").build == "cu129"
    # explicit choices
    assert plan(torch="cu118", driver=None).constraints[0] == "torch==2.13.0+cu118"
    p = plan(torch="cpu", index_url="https://mirror.example/torch-cpu", extra_index_urls=["https://m.example/pypi"],
             proxy="http://u:secret@proxy:3128")
    args = p.pip_args("/stage", "/c.txt")
    assert args[args.index("--target") + 1] == "/stage" and "-c" in args and "/c.txt" in args
    assert "https://mirror.example/torch-cpu" in args and "https://m.example/pypi" in args
    assert "http://u:secret@proxy:3128" in args and "secret" not in p.describe()
    assert plan(torch="cpu", index_url="none").torch_index is None
    with pytest.raises(deps.DepsError, match="unknown torch build"):
        plan(torch="rocm")


def test_macos_gets_the_default_wheel_with_mps(tmp_path):
    p = deps.make_plan(str(tmp_path), torch="auto", system="Darwin", machine="arm64", driver=None)
    assert p.build == "mps" and p.torch_index is None
    assert p.requirements[0] == "torch==2.13.0" and p.constraints[0] == "torch==2.13.0"
    p = deps.make_plan(str(tmp_path), torch="auto", system="Darwin", machine="x86_64", driver=None)
    assert p.build == "default" and p.requirements[0] == "torch==2.2.2"
    with pytest.raises(deps.DepsError, match="no CUDA builds for macOS"):
        deps.make_plan(str(tmp_path), torch="cu128", system="Darwin", machine="arm64")
    with pytest.raises(deps.DepsError, match="only for macOS"):
        deps.make_plan(str(tmp_path), torch="mps", system="Linux", machine="x86_64")


def test_python_interpreter_found_where_qgis_keeps_it(monkeypatch):
    v = (3, 12)
    win = deps.python_candidates(r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312",
                                 r"C:\OSGeo4W\apps\Python312", "Windows", v)
    assert win[0] == r"C:\OSGeo4W\apps\Python312\python.exe"
    mac = deps.python_candidates("/Applications/QGIS.app/Contents/MacOS/QGIS",
                                 "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.12",
                                 "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.12",
                                 "Darwin", v)
    assert mac[0] == "/Applications/QGIS.app/Contents/MacOS/bin/python3"
    assert "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.12/bin/python3.12" in mac
    lin = deps.python_candidates("/usr/bin/qgis", "/usr", "/usr", "Linux", v)
    assert lin[0] == "/usr/bin/python3.12" and "/usr/bin/qgis" not in lin
    # inside QGIS on this machine: sys.executable is the QGIS binary
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    found = deps.find_python()
    assert found == f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


def _fake_install(target: Path, py=None, module="thortiny", version="0.1"):
    site = target / "site-1"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(f"__version__ = {version!r}\n")
    dist = site / f"{module}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (target / deps.MARKER).write_text(json.dumps({"active": "site-1", "python": py or deps.py_tag(),
                                                 "installed": "2026-01-01T00:00:00", "build": "cpu"}))
    return site


def test_folder_activation_marker_and_removal(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    target = tmp_path / "deps"
    assert deps.activate(str(target)) is None  # nothing there
    site = _fake_install(target)
    (target / ".staging-old").mkdir()  # left by an interrupted run
    assert deps.activate(str(target)) == str(site) and sys.path[0] == str(site)
    assert deps.activate(str(target)) == str(site) and sys.path.count(str(site)) == 1
    deps.clean_stale(str(target))
    assert not (target / ".staging-old").exists() and site.is_dir()
    info = deps.folder_contents(str(target))
    assert info["distributions"] == {"thortiny": "0.1"} and info["bytes"] > 0
    ok, left = deps.remove(str(target))
    assert ok and not left and not target.exists() and str(site) not in sys.path
    # a folder made for another Python version is not used
    _fake_install(target, py="py2.7")
    assert deps.active_site(str(target)) is None
    # a plain folder (pip install --target) is used as it is
    plain = tmp_path / "plain"
    (plain / "x").mkdir(parents=True)
    assert deps.active_site(str(plain)) == str(plain)
    # THOR_DEPS_DIR wins over the profile folder
    monkeypatch.setenv(deps.ENV_DIR, str(plain))
    assert deps.deps_dir("/some/profile") == str(plain)
    monkeypatch.delenv(deps.ENV_DIR)
    assert deps.deps_dir("/some/profile") == os.path.join("/some/profile", "python", "thor_deps", deps.py_tag())


def test_status_sees_missing_and_too_old(monkeypatch):
    rows = {r["module"]: r for r in deps.dependency_status()}
    assert rows["torch"]["state"] == "ok"  # the test venv has them all
    monkeypatch.setattr(deps, "PACKAGES", (("torch", "torch", "99.0", "99.0"),
                                           ("no_such_module_xyz", "no-such", "1.0", "1.0")))
    assert deps.needs_install() == ["torch", "no-such"]
    assert {r["state"] for r in deps.dependency_status()} == {"too old", "missing"}


def test_report_has_every_field_and_no_secret(tmp_path):
    home = tmp_path / "home"
    cred = home / ".config" / "earthengine" / "credentials"
    cred.parent.mkdir(parents=True)
    cred.write_text('{"refresh_token": "SECRET-TOKEN-123"}')
    hub = tmp_path / "hub"
    ck = hub / "models--FM4CS--THOR-1.0-tiny" / "snapshots" / "0123456789abcdef" / "thor_v1_vit_tiny.pt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"\0" * 2_000_000)
    target = tmp_path / "deps"
    _fake_install(target)
    env = {"HOME": str(home), "HF_HUB_CACHE": str(hub), "EE_PROJECT": "my-ee-project",
           "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json")}
    # the venv's Python: torch, earthengine-api and huggingface_hub are there
    r = _cli("report", "--target", str(target), env=env, python=sys.executable)
    assert r.returncode == 0, r.stderr
    md = r.stdout
    import numpy
    import torch
    from osgeo import gdal

    assert md.startswith("## THOR for QGIS diagnostics")
    for line in (f"| QGIS | {diagnostics.UNKNOWN} |", f"| Qt | {diagnostics.UNKNOWN} |",
                 f"| Python | {sys.version.split()[0]} ", f"| GDAL | {gdal.VersionInfo('RELEASE_NAME')} |",
                 f"| numpy | {numpy.__version__} ", f"| torch | {torch.__version__} ", "| torch build | CPU |",
                 "| torch devices | cpu |", "| earthengine-api | 1.7.50 ", "| huggingface_hub | 2.4.0 ",
                 f"- folder: `{target}`", f"- in use: yes, `{target / 'site-1'}`", "thortiny 0.1",
                 f"- Hugging Face hub cache: `{hub}`",
                 "- cached: thor_v1_tiny (FM4CS/THOR-1.0-tiny/thor_v1_vit_tiny.pt, revision 0123456789ab, 2 MB)",
                 "- project: my-ee-project",
                 f"- earthengine authenticate (persistent credentials): present (`{cred}`)",
                 f"- GOOGLE_APPLICATION_CREDENTIALS: absent (`{tmp_path / 'missing.json'}`)"):
        assert line in md, line
    assert "| PROJ | " in md and "| PROJ | unknown |" not in md
    assert "SECRET" not in md
    # the facts QGIS passes in fill the QGIS lines
    md = diagnostics.to_markdown(diagnostics.collect({"qgis_version": "3.22.16", "qt_version": "5.15.8",
                                                      "ee_project": "from-setting"}, str(target),
                                                     python=sys.executable))
    assert "| QGIS | 3.22.16 |" in md and "| Qt | 5.15.8 |" in md and "- project: from-setting" in md


def test_system_build_keeps_the_torch_there_is(tmp_path):
    """--torch system (Debian 13 and others whose Python has no CPU wheel within reach, but a packaged torch):
    torch is neither required nor pinned, only checked; the PyTorch index is not used."""
    p = deps.make_plan(str(tmp_path), torch="system", index_url="https://mirror.example/torch", driver=None)
    assert p.build == "system" and p.torch_index is None and p.kept_modules == ["torch"]
    assert p.requirements == ["earthengine-api==1.7.50", "huggingface_hub==2.4.0"]
    assert not [c for c in p.constraints if c.startswith("torch")]
    assert "torch" not in p.check_modules and "the PyTorch index is not used" in p.describe()
    assert "kept:            torch" in p.describe()
    p = deps.make_plan(str(tmp_path), torch="system", extras=("dask",))
    assert p.requirements[-1].startswith("dask[distributed]==") and p.check_modules[-1] == "distributed"
    r = _cli("install", "--dry-run", "--torch", "system", "--target", str(tmp_path / "d"), python=sys.executable)
    assert r.returncode == 0, r.stderr
    assert "torch build:     system (the torch already installed for this Python is kept)" in r.stdout
    assert "packages:        earthengine-api==1.7.50 huggingface_hub==2.4.0" in r.stdout


def test_system_torch_found_and_judged(tmp_path):
    import torch

    found = deps.system_torch(sys.executable)
    assert found == {"version": torch.__version__, "file": torch.__file__}
    # a Python without torch: said, not raised (the install turns it into advice)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    found = deps.system_torch(str(bare / "bin" / "python"))
    assert "No module named 'torch'" in found["error"]
    # the import check: a kept torch may come from anywhere, but must import and be recent enough
    staging = str(tmp_path / "staging")
    data = {"modules": {"ee": {"version": "1.7.50", "file": staging + "/ee/__init__.py"},
                        "torch": {"version": "2.6.0", "file": "/usr/lib/python3/dist-packages/torch/__init__.py"}},
            "numpy": {"version": "2.2.4", "file": "/usr/lib/python3/dist-packages/numpy/__init__.py"},
            "torch": {"numpy_ok": True}}
    assert deps.check_probe(data, staging, ["ee"], ["torch"]) == []
    assert deps.check_probe(data, staging, ["ee", "torch"]) == [
        "torch was imported from /usr/lib/python3/dist-packages/torch/__init__.py, not from the new folder"]
    data["modules"]["torch"]["version"] = "1.13.1"
    assert deps.check_probe(data, staging, ["ee"], ["torch"]) == ["torch 1.13.1 is older than the 2.1 the plugin needs"]


@pytest.mark.slow
def test_a_torch_build_out_of_reach_is_explained(tmp_path):
    """A real pip run that cannot find the pinned build (the PyTorch index given is not reachable, and pip's
    own indexes have no such build), as on Debian 13 offline: the error says why and what to do instead; nothing
    is left behind."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    target = tmp_path / "deps"
    r = _cli("install", "--torch", "cu118", "--index-url", f"http://127.0.0.1:{port}/whl/cu118", "--target",
             str(target), python=sys.executable)
    assert r.returncode == 1
    assert f"the torch index http://127.0.0.1:{port}/whl/cu118 cannot be reached" in r.stdout
    assert f"error: no torch==2.13.0+cu118 for this Python ({sys.executable})" in r.stderr
    assert f"PyTorch's index (http://127.0.0.1:{port}/whl/cu118) could not be reached" in r.stderr
    assert "--torch system" in r.stderr and "python3-torch" in r.stderr
    assert not (target / deps.MARKER).exists() and not [p for p in target.iterdir() if p.name.startswith(".")]
    # any other pip failure keeps the general advice
    plan = deps.make_plan(str(tmp_path), torch="cpu", driver=None)
    msg = deps.pip_failure(1, ["ERROR: Could not install packages due to an OSError"], plan)
    assert msg.startswith("pip failed (exit code 1)") and "proxy" in msg
    # a conflict between other packages is not a missing build
    conflict = ["ERROR: Cannot install torch==2.13.0 and foo==1.0 because these package versions have conflicting "
                "dependencies.", "    foo 1.0 depends on torch<2"]
    assert deps.pip_failure(1, conflict, plan).startswith("pip failed (exit code 1)")
    pinned = conflict[:1] + ["    The user requested (constraint) torch<=2.14.1,==2.13.0+cpu"]
    assert deps.pip_failure(1, pinned, plan).startswith("no torch==2.13.0+cpu for this Python")


@pytest.mark.slow
def test_system_build_installs_the_rest_for_real(tmp_path):
    """A real installation with the 'system' build, by the venv's Python (its torch is the one to keep): only
    earthengine-api and huggingface_hub go into the folder, and the marker records the torch kept."""
    import torch

    target = tmp_path / "deps"
    r = _cli("install", "--torch", "system", "--target", str(target), python=sys.executable, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"keeping torch {torch.__version__} ({torch.__file__})" in r.stdout
    marker = json.loads((target / deps.MARKER).read_text())
    site = target / marker["active"]
    assert marker["build"] == "system" and marker["torch_index"] is None
    assert marker["versions"] == {"ee": "1.7.50", "huggingface_hub": "2.4.0", "torch": torch.__version__}
    names = {p.name.lower() for p in site.iterdir()}
    assert {"ee", "huggingface_hub"} <= names and not {n for n in names if n.startswith(("torch", "nvidia"))}


def test_deferred_build_is_decided_by_resolve(tmp_path, monkeypatch):
    """make_plan(defer=True) (the dialog's) runs neither nvidia-smi nor reads the index; resolve() does, later."""
    calls = []
    monkeypatch.setattr(deps, "nvidia_driver", lambda *a, **k: calls.append(1) or ("570.86.10", ["GPU"]))
    monkeypatch.setattr(deps, "available_cuda_tags", lambda *a, **k: calls.append(2) or ["cu126", "cu128"])
    p = deps.make_plan(str(tmp_path), torch="auto", system="Linux", machine="x86_64", defer=True, extras=("dask",))
    assert calls == [] and p.build == "auto" and p.torch_index is None
    assert not [c for c in p.constraints if c.startswith("torch")] and "decided when installing" in p.describe()
    r = deps.resolve(p)
    assert calls == [1, 2] and r.build == "cu128" and "torch==2.13.0+cu128" in r.constraints and r.deferred is None
    assert r.requirements == p.requirements and r.check_modules == p.check_modules
    assert deps.resolve(r) is r
    # nothing to wait on: decided at once
    assert deps.make_plan(str(tmp_path), torch="cpu", defer=True).deferred is None
    assert deps.make_plan(str(tmp_path), torch="auto", system="Darwin", machine="arm64", defer=True).build == "mps"
