"""The plugin's own folder of Python packages (torch, earthengine-api, huggingface_hub), and its installer.

Run with the Python that QGIS uses, from the plugin folder::

    python3 -m thor_qgis.deps install [--target DIR] [--torch auto|cpu|cuda|cu128|mps|system] [--index-url URL]
                                      [--extra-index-url URL] [--proxy URL] [--cert FILE] [--dry-run]
    python3 -m thor_qgis.deps report
    python3 -m thor_qgis.deps remove [--target DIR]

The folder is never QGIS's own site-packages. It lives per QGIS profile and Python version
(``<profile>/python/thor_deps/py3.11``), or where ``THOR_DEPS_DIR`` says. Inside it, ``thor_deps.json`` names the
one complete installation in use (a ``site-*`` sub-folder); pip writes into a ``.staging-*`` folder, the result is
import-checked in a subprocess, and only then does an atomic replace of ``thor_deps.json`` switch to it. A cancel
or a failure removes the staging folder and leaves the installation in use untouched. A folder without
``thor_deps.json`` (for instance one filled by ``pip install --target``) is used as it is.

QGIS's numpy and GDAL bindings are never replaced: the constraints pin them to the versions already installed,
and any copy pip puts in the staging folder is removed before the import check, which verifies that numpy is
still QGIS's own and that torch works with it.

Plain Python: no qgis import; nothing heavy at import time. Never prints outside ``main``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import ntpath
import os
import platform
import posixpath
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ENV_DIR = "THOR_DEPS_DIR"
MARKER = "thor_deps.json"
FOLDER = "thor_deps"
TORCH_INDEX_BASE = "https://download.pytorch.org/whl"

# import name, distribution name, the oldest version the plugin works with, the version installed (tested)
PACKAGES: Tuple[Tuple[str, str, str, str], ...] = (
    ("torch", "torch", "2.1", "2.13.0"),
    ("ee", "earthengine-api", "1.0", "1.7.50"),
    ("huggingface_hub", "huggingface_hub", "0.20", "2.4.0"),
)
# Optional packages the installer offers: name -> (import name, requirement, the oldest version that works, pin)
OPTIONAL: Dict[str, Tuple[str, str, str, str]] = {
    # the DASK_SCHEDULER option of the grid algorithms; needs neither numpy 2 nor torch
    "dask": ("distributed", "dask[distributed]", "2023.1", "2026.8.0"),
}
# Distributions QGIS brings and that must stay QGIS's own (never shadowed from the deps folder).
PROTECTED = ("numpy", "gdal", "pyqt5", "pyqt5_sip", "pyqt6", "pyqt6_sip", "sip", "qgis")
PROTECTED_IMPORTS = ("numpy", "osgeo", "PyQt5", "PyQt6", "sip", "qgis")
# Packaging tools pulled in as dependencies (torch lists setuptools): not needed to run, and in front of sys.path
# they would replace the ones QGIS and other plugins use (pkg_resources among them).
BUILD_TOOLS = ("setuptools", "pkg_resources", "_distutils_hack", "pip", "wheel")
BUILD_TOOL_FILES = ("distutils-precedence.pth",)

# Minimum NVIDIA driver for each CUDA build of the PyTorch wheels (NVIDIA's CUDA toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions": (Linux, Windows)).
CUDA_DRIVERS: Dict[str, Tuple[str, str]] = {
    "cu118": ("520.61.05", "520.06"),
    "cu121": ("530.30.02", "531.14"),
    "cu124": ("550.54.14", "551.61"),
    "cu126": ("560.28.03", "560.76"),
    "cu128": ("570.26", "570.65"),
    "cu129": ("575.51.03", "576.02"),
    "cu130": ("580.65.06", "580.88"),
}
# CUDA builds assumed when the PyTorch index cannot be read to list those of the pinned torch
FALLBACK_CUDA_TAGS = ("cu126", "cu128", "cu130")

Log = Callable[[str], None]


class DepsError(RuntimeError):
    """An installation step failed; the message says what to do."""


class DepsCanceled(DepsError):
    pass


# ------------------------------------------------------------------------------------------------
# Versions and the running Python
# ------------------------------------------------------------------------------------------------


def version_tuple(text: str) -> Tuple[int, ...]:
    """Leading numeric release of a version string: '2.13.0+cpu' -> (2, 13, 0); '1.26.4rc1' -> (1, 26, 4)."""
    out = []
    for part in re.split(r"[.+-]", str(text)):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.group() != part:
            break
    return tuple(out)


def public_version(text: str) -> str:
    """The version without its local label ('2.13.0+cpu' -> '2.13.0')."""
    return str(text).split("+", 1)[0]


def py_tag(version_info=None) -> str:
    v = version_info or sys.version_info
    return f"py{v[0]}.{v[1]}"


def distribution_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken metadata folder
        return None


def installed_version(import_name: str, dist_name: str) -> Optional[str]:
    """Version of a package importable by the running Python (None when it is not importable).

    The module is not imported (importing torch takes seconds): the version comes from the metadata of the
    distribution that lies next to the module found."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        here = os.path.dirname(spec.origin)
        parent = os.path.dirname(here) if spec.submodule_search_locations else here
    elif spec.submodule_search_locations:
        parent = os.path.dirname(list(spec.submodule_search_locations)[0])
    else:
        parent = ""
    norm = re.sub(r"[-_.]+", "_", dist_name).lower()
    try:
        for dist in importlib.metadata.distributions(path=[parent]):
            if re.sub(r"[-_.]+", "_", dist.metadata["Name"] or "").lower() == norm:
                return dist.version
    except Exception:
        pass
    return distribution_version(dist_name) or "unknown"


def dependency_status() -> List[Dict[str, Optional[str]]]:
    """Each required package: import name, distribution, version seen (or None), minimum, and 'ok',
    'missing' or 'too old'."""
    rows = []
    for mod, dist, minimum, _pin in PACKAGES:
        v = installed_version(mod, dist)
        if v is None:
            state = "missing"
        elif v != "unknown" and version_tuple(v) < version_tuple(minimum):
            state = "too old"
        else:
            state = "ok"
        rows.append({"module": mod, "distribution": dist, "version": v, "minimum": minimum, "state": state})
    return rows


def needs_install(status: Optional[Sequence[Dict]] = None) -> List[str]:
    """Distributions that are missing or too old in the running Python."""
    return [r["distribution"] for r in (status if status is not None else dependency_status()) if r["state"] != "ok"]


def python_candidates(executable: str, prefix: str, base_prefix: str, system: str,
                      version_info=None) -> List[str]:
    """Where QGIS's Python interpreter may be, best first. Inside QGIS ``sys.executable`` is the QGIS binary
    (``qgis``, ``qgis-bin.exe``, ``QGIS.app/Contents/MacOS/QGIS``), not Python."""
    v = version_info or sys.version_info
    mm = f"{v[0]}.{v[1]}"
    pm = ntpath if system == "Windows" else posixpath  # paths of that system, whatever this one is
    out: List[str] = []
    name = pm.basename(executable or "").lower()
    if name.startswith("python"):
        out.append(executable)
    if system == "Windows":
        for root in (prefix, base_prefix):
            out += [pm.join(root, "python.exe"), pm.join(root, "python3.exe")]
        exe_dir = pm.dirname(executable or "")
        # OSGeo4W: <root>/bin/qgis-bin.exe and <root>/apps/Python3xx/python.exe, plus <root>/bin/python.exe
        osgeo_root = pm.dirname(exe_dir)
        out += [pm.join(osgeo_root, "apps", f"Python{v[0]}{v[1]}", "python.exe"),
                pm.join(exe_dir, "python.exe"), pm.join(exe_dir, "python3.exe")]
    elif system == "Darwin":
        exe_dir = pm.dirname(executable or "")  # QGIS.app/Contents/MacOS
        contents = pm.dirname(exe_dir)
        out += [pm.join(exe_dir, "bin", "python3"), pm.join(exe_dir, "bin", f"python{mm}"),
                pm.join(exe_dir, "python3"), pm.join(exe_dir, f"python{mm}")]
        for root in (prefix, base_prefix):
            out += [pm.join(root, "bin", f"python{mm}"), pm.join(root, "bin", "python3")]
        out += [pm.join(contents, "Frameworks", "Python.framework", "Versions", mm, "bin", f"python{mm}"),
                pm.join(contents, "Frameworks", "Python.framework", "Versions", "Current", "bin", "python3")]
    else:
        for root in (prefix, base_prefix):
            out += [pm.join(root, "bin", f"python{mm}"), pm.join(root, "bin", "python3")]
        out += [f"/usr/bin/python{mm}", "/usr/bin/python3", f"/usr/local/bin/python{mm}"]
    seen, uniq = set(), []
    for p in out:
        if p and p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def _subprocess_flags() -> Dict:
    if os.name == "nt":
        return {"creationflags": 0x08000000}  # CREATE_NO_WINDOW: no console flashing up from QGIS
    return {"start_new_session": True}  # its own process group, so a cancel ends pip's children too


def interpreter_matches(path: str, version_info=None, timeout: float = 30.0) -> bool:
    """Whether ``path`` runs a Python of the same major.minor version as this one."""
    v = version_info or sys.version_info
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return False
    try:
        r = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           **_subprocess_flags())
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() == f"{v[0]}.{v[1]}"


def find_python() -> str:
    """QGIS's own Python interpreter (the one pip must run with)."""
    for cand in python_candidates(sys.executable, sys.prefix, getattr(sys, "base_prefix", sys.prefix),
                                  platform.system()):
        if interpreter_matches(cand):
            return cand
    raise DepsError(
        f"QGIS's Python interpreter (Python {sys.version_info[0]}.{sys.version_info[1]}) was not found next to "
        f"{sys.executable} or under {sys.prefix}. Run the installer in a terminal with the Python QGIS uses: "
        "python3 -m thor_qgis.deps install (from the plugin folder).")


# ------------------------------------------------------------------------------------------------
# The folder
# ------------------------------------------------------------------------------------------------


def default_profile_dir(env=None, system: Optional[str] = None, profile: str = "default") -> str:
    """The QGIS profile folder a headless run should assume (QGIS_CUSTOM_CONFIG_PATH, else the platform's)."""
    env = os.environ if env is None else env
    system = system or platform.system()
    custom = env.get("QGIS_CUSTOM_CONFIG_PATH", "").strip()
    if custom:
        root = custom
    elif system == "Windows":
        root = os.path.join(env.get("APPDATA", os.path.expanduser("~")), "QGIS", "QGIS3")
    elif system == "Darwin":
        root = os.path.join(os.path.expanduser("~"), "Library", "Application Support", "QGIS", "QGIS3")
    else:
        root = os.path.join(env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share"),
                            "QGIS", "QGIS3")
    return os.path.join(root, "profiles", profile)


def deps_dir(profile_dir: Optional[str] = None, env=None) -> str:
    """``$THOR_DEPS_DIR``, else ``<profile>/python/thor_deps/py3.X``."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_DIR, "").strip()
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    profile_dir = profile_dir or default_profile_dir(env)
    return os.path.join(os.path.abspath(profile_dir), "python", FOLDER, py_tag())


def read_marker(target: str) -> Optional[Dict]:
    try:
        with open(os.path.join(target, MARKER), "r", encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def active_site(target: str) -> Optional[str]:
    """The folder to put on sys.path for ``target``, or None (nothing installed, or made for another Python)."""
    if not os.path.isdir(target):
        return None
    marker = read_marker(target)
    if marker is None:
        if os.path.isfile(os.path.join(target, MARKER)):
            return None  # unreadable marker: use nothing rather than a guess
        has_packages = any(not n.startswith(".") for n in os.listdir(target))
        return target if has_packages else None
    if marker.get("python") != py_tag():
        return None
    site = os.path.join(target, str(marker.get("active", "")))
    if not marker.get("active") or os.path.dirname(os.path.abspath(site)) != os.path.abspath(target):
        return None
    return site if os.path.isdir(site) else None


def activate(target: Optional[str] = None, log: Optional[Log] = None) -> Optional[str]:
    """Put the deps folder in front of sys.path (idempotent). Returns the path added, or None.

    In front, so that a package installed there (torch, typing_extensions newer than the system's…) wins over
    an older copy elsewhere; numpy and GDAL's bindings are never in it, so QGIS's own stay in use."""
    target = target or deps_dir()
    site = active_site(target)
    if site is None:
        return None
    if site not in sys.path:
        sys.path.insert(0, site)
        importlib.invalidate_caches()
    if log is not None:
        shadowed = _already_imported_elsewhere(site)
        if shadowed:
            log(f"THOR dependencies: {', '.join(shadowed)} were imported before the plugin started and keep "
                "their other copy until QGIS restarts.")
    return site


def deactivate(target: Optional[str] = None) -> None:
    target = os.path.abspath(target or deps_dir())
    sys.path[:] = [p for p in sys.path if not (os.path.abspath(p) == target
                                               or os.path.abspath(p).startswith(target + os.sep))]
    importlib.invalidate_caches()


def _already_imported_elsewhere(site: str) -> List[str]:
    out = []
    try:
        names = os.listdir(site)
    except OSError:
        return out
    for n in names:
        mod = n[:-3] if n.endswith(".py") else n
        if not mod.isidentifier() or mod not in sys.modules:
            continue
        f = getattr(sys.modules[mod], "__file__", None) or ""
        if f and not os.path.abspath(f).startswith(os.path.abspath(site) + os.sep):
            out.append(mod)
    return sorted(out)


def folder_contents(target: str) -> Dict:
    """What is installed in the deps folder: marker data, distributions and versions, size in bytes."""
    site = active_site(target)
    out: Dict = {"target": target, "exists": os.path.isdir(target), "active": site, "marker": read_marker(target),
                 "distributions": {}, "bytes": 0}
    if site:
        try:
            for d in importlib.metadata.distributions(path=[site]):
                out["distributions"][d.metadata["Name"]] = d.version
        except Exception:
            pass
        out["bytes"] = folder_size(site)
    return out


def folder_size(path: str) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(base, n)).st_size
            except OSError:
                pass
    return total


def remove(target: Optional[str] = None) -> Tuple[bool, List[str]]:
    """Stop using the deps folder and delete it. Returns (fully removed, paths left behind).

    The marker goes first, so the folder is out of use from the next start even if some files cannot be deleted
    now (on Windows, a library loaded by this QGIS stays locked until it exits)."""
    target = os.path.abspath(target or deps_dir())
    deactivate(target)
    if not os.path.isdir(target):
        return True, []
    marker = os.path.join(target, MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    for n in os.listdir(target):
        p = os.path.join(target, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.remove(p)
            except OSError:
                pass
    try:
        os.rmdir(target)
    except OSError:
        pass
    left = [os.path.join(target, n) for n in os.listdir(target)] if os.path.isdir(target) else []
    return not left, left


def clean_stale(target: str) -> None:
    """Remove staging folders of interrupted runs and installations no longer in use."""
    if not os.path.isdir(target):
        return
    marker = read_marker(target) or {}
    for n in os.listdir(target):
        p = os.path.join(target, n)
        stale_site = n.startswith("site-") and n != marker.get("active") and read_marker(target) is not None
        if os.path.isdir(p) and (n.startswith(".staging-") or stale_site):
            if not any(os.path.abspath(s) == os.path.abspath(p) for s in sys.path):
                shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The build of torch
# ------------------------------------------------------------------------------------------------


def nvidia_driver(timeout: float = 15.0) -> Optional[Tuple[str, List[str]]]:
    """(driver version, GPU names) from nvidia-smi, or None when there is no NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None and os.name == "nt":
        cand = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvidia-smi.exe")
        exe = cand if os.path.isfile(cand) else None
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=driver_version,name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, **_subprocess_flags())
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [ln.split(",", 1) for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or not rows or not re.match(r"\d+\.\d+", rows[0][0].strip()):
        return None
    return rows[0][0].strip(), [x[1].strip() for x in rows if len(x) > 1]


def available_cuda_tags(torch_version: str, index_base: str = TORCH_INDEX_BASE, version_info=None,
                        timeout: float = 15.0) -> Optional[List[str]]:
    """CUDA builds the PyTorch index has for this torch and Python, read from its torch page; None if unreadable."""
    v = version_info or sys.version_info
    cp = f"cp{v[0]}{v[1]}"
    try:
        with urllib.request.urlopen(index_base.rstrip("/") + "/torch/", timeout=timeout) as resp:
            page = resp.read().decode("utf-8", "replace")
    except Exception:
        return None
    pat = re.compile(r"torch-" + re.escape(torch_version) + r"%2B(cu\d+)-" + cp + r"-|torch-"
                     + re.escape(torch_version) + r"\+(cu\d+)-" + cp + r"-")
    tags = {a or b for a, b in pat.findall(page)}
    return sorted(tags, key=lambda t: int(t[2:]))


def choose_cuda_tag(driver: str, tags: Sequence[str], system: str) -> Optional[str]:
    """The newest CUDA build the driver can run (None when even the oldest needs a newer driver)."""
    col = 1 if system == "Windows" else 0
    ok = [t for t in tags if t in CUDA_DRIVERS and version_tuple(driver) >= version_tuple(CUDA_DRIVERS[t][col])]
    return max(ok, key=lambda t: int(t[2:])) if ok else None


def torch_version_for(version_info=None, system: Optional[str] = None, machine: Optional[str] = None) -> str:
    v = version_info or sys.version_info
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Darwin" and machine in ("x86_64", "amd64"):
        return "2.2.2"  # the last torch with wheels for Intel Macs
    if (v[0], v[1]) < (3, 10):
        return "2.8.0"  # the last torch for Python 3.9
    return PACKAGES[0][3]


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    target: str
    python: str
    build: str  # cpu | cuXXX | mps | default
    build_reason: str
    requirements: List[str]
    constraints: List[str]
    torch_index: Optional[str] = None  # extra index for the torch wheels (None: pip's configured indexes)
    extra_index_urls: List[str] = field(default_factory=list)
    find_links: List[str] = field(default_factory=list)
    no_index: bool = False
    proxy: Optional[str] = None
    cert: Optional[str] = None
    check_modules: List[str] = field(default_factory=lambda: [p[0] for p in PACKAGES])
    notes: List[str] = field(default_factory=list)
    # checked to import (and be recent enough) from QGIS's Python as it is, not installed: the system torch
    kept_modules: List[str] = field(default_factory=list)
    # what system_torch found when the plan was made (auto keeping a working torch); None: found when installing
    kept_torch: Optional[Dict] = None
    # make_plan's arguments when the build is to be decided by the installation itself (``resolve``): finding
    # the NVIDIA driver and reading PyTorch's index can take many seconds, too long for a dialog to wait on
    deferred: Optional[Dict] = None

    def pip_args(self, staging: str, constraints_file: str) -> List[str]:
        args = [self.python, "-m", "pip", "install", "--target", staging, "--no-input",
                "--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off",
                "--prefer-binary", "-c", constraints_file]
        if self.no_index:
            args.append("--no-index")
        if self.torch_index:
            args += ["--extra-index-url", self.torch_index]
        for u in self.extra_index_urls:
            args += ["--extra-index-url", u]
        for u in self.find_links:
            args += ["--find-links", u]
        if self.proxy:
            args += ["--proxy", self.proxy]
        if self.cert:
            args += ["--cert", self.cert]
        return args + list(self.requirements)

    def describe(self) -> str:
        lines = [
            f"target folder:   {self.target}",
            f"python:          {self.python}",
            f"torch build:     {self.build} ({self.build_reason})",
            f"torch index:     {self.torch_index or 'pip configured indexes (no extra index)'}",
            "packages:        " + " ".join(self.requirements),
            "constraints:     " + " ".join(self.constraints),
        ]
        if self.kept_modules:
            lines.append("kept:            " + " ".join(self.kept_modules)
                         + " (as this Python imports it; checked before anything is installed)")
        if self.extra_index_urls:
            lines.append("extra indexes:   " + " ".join(self.extra_index_urls))
        if self.find_links:
            lines.append("find links:      " + " ".join(self.find_links))
        if self.proxy:
            lines.append(f"proxy:           {_redact_url(self.proxy)}")
        if self.cert:
            lines.append(f"certificates:    {self.cert}")
        lines += [f"note:            {n}" for n in self.notes]
        return "\n".join(lines)


def _redact_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def protected_constraints() -> List[str]:
    """Pins that keep QGIS's numpy and GDAL bindings the ones in use."""
    out = []
    for dist in ("numpy", "GDAL"):
        v = distribution_version(dist)
        if v is None and dist == "numpy" and "numpy" in sys.modules:
            v = getattr(sys.modules["numpy"], "__version__", None)
        if v:
            out.append(f"{dist}=={public_version(v)}")
    return out


def make_plan(target: Optional[str] = None, torch: str = "auto", index_url: Optional[str] = None,
              extra_index_urls: Sequence[str] = (), proxy: Optional[str] = None, cert: Optional[str] = None,
              python: Optional[str] = None, system: Optional[str] = None, machine: Optional[str] = None,
              driver: Optional[Tuple[str, List[str]]] = "detect", index_base: str = TORCH_INDEX_BASE,
              torch_version: Optional[str] = None, extras: Sequence[str] = (), defer: bool = False,
              present_torch: Optional[Dict] = "detect") -> Plan:
    """Decide what to install where, and from which index. ``torch``: auto (CUDA when nvidia-smi reports a
    driver, the default wheel on macOS, else CPU), cpu, cuda (the build matching the driver), cuXXX, mps, or
    system (keep the torch the Python has). ``index_url`` replaces the PyTorch index ('none': only pip's own
    configured indexes and find-links). ``extras``: optional packages to add, by their names in ``OPTIONAL``
    ("dask"). ``defer``: where the build depends on the NVIDIA driver (auto, cuda), leave finding it to the
    installation (``resolve``, called by ``install``), so that nothing here waits on nvidia-smi or the network.
    ``present_torch``: what ``system_torch`` says of the Python's own torch ("detect": ask it); auto keeps a
    working one where the CPU build would be chosen, since installing another gains nothing."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    choice = (torch or "auto").strip().lower()
    if defer and driver == "detect" and system != "Darwin" and choice in ("auto", "cuda"):
        args = dict(target=target, torch=torch, index_url=index_url, extra_index_urls=list(extra_index_urls),
                    proxy=proxy, cert=cert, python=python, system=system, machine=machine, index_base=index_base,
                    torch_version=torch_version, extras=list(extras))
        plan = make_plan(**dict(args, torch="cpu", driver=None))  # the packages and checks are the same
        reason = ("decided when installing: CUDA if nvidia-smi reports a driver, else CPU" if choice == "auto"
                  else "decided when installing: the CUDA build the NVIDIA driver runs")
        return dataclasses.replace(plan, build=choice, build_reason=reason, torch_index=None,
                                   constraints=[c for c in plan.constraints if not c.startswith("torch==")],
                                   deferred=args)
    tv = torch_version or torch_version_for(system=system, machine=machine)
    notes: List[str] = []
    if choice not in ("auto", "cpu", "cuda", "mps", "system") and not re.fullmatch(r"cu\d{3}", choice):
        raise DepsError(f"unknown torch build '{torch}': use auto, cpu, cuda, a CUDA build such as cu128, mps, "
                        "or system")
    if choice == "system":
        return _system_torch_plan(target, python, index_url, extra_index_urls, proxy, cert, extras)
    if system == "Darwin":
        if choice.startswith("cu"):
            raise DepsError("PyTorch has no CUDA builds for macOS: use auto, cpu or mps")
        build = "mps" if machine in ("arm64", "aarch64") else "default"
        reason = ("macOS on Apple silicon: the default wheel, with the MPS (Metal) device" if build == "mps"
                  else "macOS on Intel: the default wheel (CPU)")
    elif choice == "mps":
        raise DepsError("the MPS build exists only for macOS on Apple silicon")
    elif choice == "cpu":
        build, reason = "cpu", "asked for"
    elif re.fullmatch(r"cu\d{3}", choice):
        build, reason = choice, "asked for"
    else:
        info = nvidia_driver() if driver == "detect" else driver
        if info is None:
            if choice == "cuda":
                raise DepsError("no NVIDIA driver found (nvidia-smi did not report one): install the NVIDIA "
                                "driver first, or choose the CPU build")
            build, reason = "cpu", "no NVIDIA driver found (nvidia-smi)"
        else:
            drv, gpus = info
            tags = available_cuda_tags(tv, index_base)
            if tags is None:
                tags = list(FALLBACK_CUDA_TAGS)
                notes.append(f"the PyTorch index could not be read; assuming torch {tv} has builds "
                             + ", ".join(tags))
            tag = choose_cuda_tag(drv, tags, system)
            if tag is None:
                if choice == "cuda":
                    raise DepsError(f"the NVIDIA driver {drv} is older than any CUDA build of torch {tv} needs "
                                    f"({', '.join(tags)}): update the driver, or choose the CPU build")
                build, reason = "cpu", f"NVIDIA driver {drv} too old for the CUDA builds of torch {tv}"
            else:
                build = tag
                reason = f"NVIDIA driver {drv} ({', '.join(gpus) or 'GPU'}) runs CUDA {tag[2:-1]}.{tag[-1]}"
    if choice == "auto" and build == "cpu":
        found = system_torch(python or sys.executable) if present_torch == "detect" else present_torch
        if found and "error" not in found:
            plan = _system_torch_plan(target, python, index_url, extra_index_urls, proxy, cert, extras)
            return dataclasses.replace(plan, build_reason=f"{reason}, and torch {found['version']} already works "
                                                          f"here ({found['file']}): kept", kept_torch=found)
    if build in ("cpu",) or build.startswith("cu"):
        pin = f"torch=={tv}+{build}"
        default_index = f"{index_base.rstrip('/')}/{build}"
    else:
        pin = f"torch=={tv}"
        default_index = None
    if index_url is None:
        torch_index = default_index
    elif index_url.strip().lower() in ("", "none"):
        torch_index = None
    else:
        torch_index = index_url.strip()
    requirements, check = _other_requirements(extras)
    requirements.insert(0, f"torch=={tv}")
    check.insert(0, "torch")
    constraints = [pin] + protected_constraints()
    return Plan(target=os.path.abspath(target or deps_dir()), python=python or sys.executable, build=build,
                build_reason=reason, requirements=requirements, constraints=constraints, torch_index=torch_index,
                extra_index_urls=list(extra_index_urls), proxy=proxy or None, cert=cert or None, notes=notes,
                check_modules=check)


def resolve(plan: Plan) -> Plan:
    """The plan with its build decided, if ``make_plan(defer=True)`` left that to the installation."""
    return plan if plan.deferred is None else make_plan(**plan.deferred)


def _other_requirements(extras: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Pinned requirements and import names of the packages other than torch, optional ones included."""
    requirements = [f"{dist}=={pinv}" for _m, dist, _min, pinv in PACKAGES[1:]]
    check = [p[0] for p in PACKAGES[1:]]
    for name in dict.fromkeys(e.strip().lower() for e in extras if e and e.strip()):
        if name not in OPTIONAL:
            raise DepsError(f"unknown optional package '{name}': choose from {', '.join(OPTIONAL)}")
        mod, req, _min, pinv = OPTIONAL[name]
        requirements.append(f"{req}=={pinv}")
        check.append(mod)
    return requirements, check


def _system_torch_plan(target, python, index_url, extra_index_urls, proxy, cert, extras) -> Plan:
    """Keep the torch QGIS's Python already imports (a distribution's package such as Debian's python3-torch,
    or one installed by hand) and install only the other packages. Whether that torch imports, works with
    QGIS's numpy and is recent enough is checked by the installation itself (it takes seconds: not here, where a
    dialog may be waiting)."""
    requirements, check = _other_requirements(extras)
    notes = []
    if index_url is not None and index_url.strip().lower() not in ("", "none"):
        notes.append("the PyTorch index is not used: torch is not installed")
    return Plan(target=os.path.abspath(target or deps_dir()), python=python or sys.executable, build="system",
                build_reason="the torch already installed for this Python is kept", requirements=requirements,
                constraints=protected_constraints(), torch_index=None, extra_index_urls=list(extra_index_urls),
                proxy=proxy or None, cert=cert or None, notes=notes, check_modules=check, kept_modules=["torch"])


def system_torch(python: str, timeout: float = 300.0, is_canceled: Optional[Callable[[], bool]] = None) -> Dict:
    """What ``python`` imports as torch with nothing in front of its path: {"version", "file"}, or {"error"}."""
    data = probe(python, [], ["torch"], timeout=timeout, is_canceled=is_canceled)
    if data.get("crashed"):
        return {"error": f"importing torch crashed (exit code {data.get('returncode')})"}
    t = data["modules"].get("torch", {})
    if "error" in t:
        return {"error": t["error"]}
    out = {"version": t.get("version", ""), "file": t.get("file", "")}
    if not data.get("torch", {}).get("numpy_ok", False):
        out["error"] = f"torch {out['version']} does not work with this Python's numpy: " + str(
            data.get("torch", {}).get("numpy_error", ""))
    elif version_tuple(out["version"]) < version_tuple(PACKAGES[0][2]):
        out["error"] = f"torch {out['version']} is older than the {PACKAGES[0][2]} the plugin needs"
    return out


# ------------------------------------------------------------------------------------------------
# Running it
# ------------------------------------------------------------------------------------------------

# Imports the packages with the staging folder in front of sys.path, the way the plugin will, and reports
# versions and where each came from as one JSON line. numpy must stay QGIS's own; torch must work with it.
PROBE = r"""
import importlib, json, sys
front, modules = json.loads(sys.argv[1])
sys.path[:0] = front
out = {"python": sys.version.split()[0], "modules": {}}
for name in modules:
    try:
        m = importlib.import_module(name)
        out["modules"][name] = {"version": str(getattr(m, "__version__", "") or ""),
                                "file": getattr(m, "__file__", None) or ""}
    except BaseException as e:
        out["modules"][name] = {"error": "%s: %s" % (type(e).__name__, e)}
try:
    import numpy
    out["numpy"] = {"version": numpy.__version__, "file": numpy.__file__}
except BaseException as e:
    out["numpy"] = {"error": "%s: %s" % (type(e).__name__, e)}
if "torch" in sys.modules:
    t = sys.modules["torch"]
    info = {"cuda": getattr(t.version, "cuda", None), "devices": ["cpu"]}
    try:
        if t.cuda.is_available():
            info["devices"] += ["cuda:%d %s" % (i, t.cuda.get_device_name(i)) for i in range(t.cuda.device_count())]
    except BaseException as e:
        info["cuda_error"] = str(e)
    try:
        if t.backends.mps.is_available():
            info["devices"].append("mps")
    except BaseException:
        pass
    try:
        import numpy
        info["numpy_ok"] = bool(t.from_numpy(numpy.arange(3.0)).sum().item() == 3.0)
    except BaseException as e:
        info["numpy_ok"] = False
        info["numpy_error"] = "%s: %s" % (type(e).__name__, e)
    out["torch"] = info
sys.stdout.write("THOR_PROBE " + json.dumps(out) + "\n")
"""


def probe(python: str, front: Sequence[str], modules: Sequence[str], timeout: float = 300.0,
          is_canceled: Optional[Callable[[], bool]] = None) -> Dict:
    """Import ``modules`` in a fresh interpreter (a broken wheel crashes that one, not QGIS)."""
    args = [python, "-c", PROBE, json.dumps([list(front), list(modules)])]
    lines: List[str] = []
    rc = _run_streaming(args, lines.append, is_canceled or (lambda: False), timeout=timeout)
    for ln in lines:
        if ln.startswith("THOR_PROBE "):
            data = json.loads(ln[len("THOR_PROBE "):])
            data["returncode"] = rc
            return data
    tail = "\n".join(lines[-20:])
    return {"returncode": rc, "crashed": True, "output": tail, "modules": {}}


def _terminate(proc: subprocess.Popen) -> None:
    try:
        if os.name != "nt":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=10)
    except Exception:
        try:
            if os.name != "nt":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(timeout=10)
        except Exception:
            pass


def _run_streaming(args: Sequence[str], log: Log, is_canceled: Callable[[], bool], timeout: Optional[float] = None,
                   env: Optional[Dict[str, str]] = None) -> int:
    """Run a command, passing each output line to ``log`` as it comes; end it on cancel (DepsCanceled)."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, text=True, encoding="utf-8", errors="replace", bufsize=1,
                            **_subprocess_flags())
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def reader():
        try:
            for ln in proc.stdout:
                lines.put(ln.rstrip("\r\n"))
        finally:
            lines.put(None)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    start = time.monotonic()
    done = False
    while not done:
        if is_canceled():
            _terminate(proc)
            raise DepsCanceled("canceled")
        if timeout is not None and time.monotonic() - start > timeout:
            _terminate(proc)
            raise DepsError(f"{os.path.basename(args[0])} did not finish within {timeout:.0f} s")
        try:
            item = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if item is None:
            done = True
        else:
            log(item)
    proc.wait()
    t.join(timeout=5)
    return proc.returncode


_PROGRESS_STEPS = (("Collecting ", 0.05, 0.45), ("Downloading ", 0.10, 0.55), ("Processing ", 0.10, 0.55),
                   ("Installing collected packages", 0.60, 0.60), ("Successfully installed", 0.80, 0.80))


class _PipProgress:
    """Coarse progress from pip's output lines (pip says nothing about totals)."""

    def __init__(self, progress: Callable[[float], None]):
        self.progress, self.value, self.seen = progress, 0.0, 0

    def __call__(self, line: str) -> None:
        for prefix, lo, hi in _PROGRESS_STEPS:
            if line.lstrip().startswith(prefix):
                self.seen += 1
                target = lo if lo == hi else min(hi, lo + 0.02 * self.seen)
                if target > self.value:
                    self.value = target
                    self.progress(target)
                return


@dataclass
class Result:
    target: str
    site: str
    seconds: float
    bytes: int
    versions: Dict[str, str]
    build: str
    probe: Dict


def check_probe(data: Dict, staging: str, modules: Sequence[str], kept: Sequence[str] = ()) -> List[str]:
    """What is wrong with an import check's result (empty when all is well). ``modules`` must come from the new
    folder; ``kept`` ones (the system torch) must import from wherever the Python has them."""
    problems = []
    if data.get("crashed"):
        problems.append(f"the import check crashed (exit code {data.get('returncode')}):\n{data.get('output', '')}")
        return problems
    staging_abs = os.path.abspath(staging) + os.sep
    for name in list(modules) + list(kept):
        m = data["modules"].get(name, {})
        if "error" in m:
            problems.append(f"{name} does not import: {m['error']}")
        elif name not in kept and not os.path.abspath(m.get("file") or "").startswith(staging_abs):
            problems.append(f"{name} was imported from {m.get('file')}, not from the new folder")
    npy = data.get("numpy", {})
    if npy.get("file") and os.path.abspath(npy["file"]).startswith(staging_abs):
        problems.append("numpy would be imported from the new folder instead of QGIS's own")
    t = data.get("torch")
    if t is not None and not t.get("numpy_ok", False) and "error" not in npy:
        problems.append(f"torch does not work with QGIS's numpy {npy.get('version')}: {t.get('numpy_error', '')}")
    for mod, dist, minimum, _pin in PACKAGES:
        v = data["modules"].get(mod, {}).get("version")
        if (mod in modules or mod in kept) and v and version_tuple(v) < version_tuple(minimum):
            problems.append(f"{dist} {v} is older than the {minimum} the plugin needs")
    return problems


def _prune_protected(staging: str, log: Log) -> None:
    """Remove any copy of numpy / GDAL / PyQt / sip, and packaging tools, that pip put in the staging folder."""
    for n in sorted(os.listdir(staging)):
        base = re.split(r"[-.]", n, maxsplit=1)[0]
        norm = base.lower()
        if norm in BUILD_TOOLS or n in BUILD_TOOL_FILES:
            p = os.path.join(staging, n)
            log(f"removing {n} from the new folder: a packaging tool, not needed to run")
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.remove(p)
        elif norm in PROTECTED or base in PROTECTED_IMPORTS or norm in ("osgeo", "numpy.libs"):
            p = os.path.join(staging, n)
            log(f"removing {n} from the new folder: QGIS's own copy stays in use")
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.remove(p)


def install(plan: Plan, log: Log = lambda s: None, progress: Callable[[float], None] = lambda f: None,
            is_canceled: Callable[[], bool] = lambda: False, pip_timeout: Optional[float] = None) -> Result:
    """Install the plan into a staging folder, import-check it in a subprocess, then switch to it atomically.

    On a cancel (DepsCanceled) or a failure (DepsError) the staging folder is removed and the installation in
    use, if any, is left as it was."""
    t0 = time.monotonic()
    if plan.deferred is not None:
        log("finding the NVIDIA driver and the builds PyTorch's index has…")
        plan = resolve(plan)
        log(f"torch build: {plan.build} ({plan.build_reason})" + "".join(f"; {n}" for n in plan.notes))
    target = plan.target
    os.makedirs(target, exist_ok=True)
    clean_stale(target)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    staging = tempfile.mkdtemp(prefix=".staging-", dir=target)
    index_dropped: Optional[str] = None
    try:
        r = subprocess.run([plan.python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL, **_subprocess_flags())
        if r.returncode != 0:
            raise DepsError(
                f"pip is not available for {plan.python}: " + (r.stderr.strip().splitlines() or [""])[-1]
                + ". Install it (Debian/Ubuntu: sudo apt install python3-pip; elsewhere: python -m ensurepip), "
                "then try again.")
        log(f"pip: {r.stdout.strip()}")
        if "torch" in plan.kept_modules:
            found = plan.kept_torch
            if found is None:  # not looked at yet (the build was chosen, not found by auto)
                log(f"checking the torch that {plan.python} already imports…")
                found = system_torch(plan.python, is_canceled=is_canceled)
            if "error" in found:
                raise DepsError(
                    f"the torch already installed is to be kept, but for {plan.python}: {found['error']}. Install "
                    "your distribution's torch (Debian/Ubuntu: sudo apt install python3-torch) or choose the CPU "
                    "build.")
            log(f"keeping torch {found['version']} ({found['file']})")
        if plan.torch_index and not plan.no_index and not index_reachable(plan.torch_index, proxy=plan.proxy):
            # pip would retry every package against it (minutes); the pin keeps the build, whatever the index
            log(f"the torch index {_redact_url(plan.torch_index)} cannot be reached: using pip's configured "
                "indexes only (the build pin in the constraints still applies)")
            index_dropped = plan.torch_index
            plan = dataclasses.replace(plan, torch_index=None)
        constraints_file = os.path.join(staging, "..", f".constraints-{stamp}.txt")
        constraints_file = os.path.abspath(constraints_file)
        with open(constraints_file, "w", encoding="utf-8") as f:
            f.write("\n".join(plan.constraints) + "\n")
        try:
            args = plan.pip_args(staging, constraints_file)
            log("running: " + " ".join(_redact_url(a) for a in args))
            progress(0.02)
            said: List[str] = []
            rc = _run_streaming(args, _tee(log, _PipProgress(progress), said.append), is_canceled,
                                timeout=pip_timeout)
        finally:
            try:
                os.remove(constraints_file)
            except OSError:
                pass
        if rc != 0:
            raise DepsError(pip_failure(rc, said, plan, index_dropped))
        _prune_protected(staging, log)
        progress(0.85)
        log("checking the new packages in a separate Python process…")
        data = probe(plan.python, [staging], plan.check_modules + plan.kept_modules, is_canceled=is_canceled)
        problems = check_probe(data, staging, plan.check_modules, plan.kept_modules)
        if problems:
            raise DepsError("the installed packages failed the import check, so they are not used:\n- "
                            + "\n- ".join(problems))
        if is_canceled():
            raise DepsCanceled("canceled")
        progress(0.95)
        site_name = f"site-{stamp}"
        site = os.path.join(target, site_name)
        os.replace(staging, site)
        staging = None
        versions = {k: v.get("version", "") for k, v in data["modules"].items()}
        marker = {"active": site_name, "python": py_tag(), "python_executable": plan.python,
                  "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build": plan.build,
                  "requirements": plan.requirements, "constraints": plan.constraints,
                  "torch_index": _redact_url(plan.torch_index) if plan.torch_index else None, "versions": versions}
        tmp = os.path.join(target, f".{MARKER}.{stamp}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(target, MARKER))  # the switch: atomic
        clean_stale(target)
        progress(1.0)
        return Result(target=target, site=site, seconds=time.monotonic() - t0, bytes=folder_size(site),
                      versions=versions, build=plan.build, probe=data)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def pip_failure(rc: int, output: Sequence[str], plan: Plan, unreachable_index: Optional[str] = None) -> str:
    """What to tell the user when pip failed: the usual advice, or, when the pinned torch build was not found
    (PyTorch's index not reachable, or no build of it for this Python), what can be done instead."""
    # pip says it either way: no file at all, or none that meets the build pin in the constraints (a conflict
    # whose cause is that pin: "The user requested (constraint) torch...==2.13.0+cpu")
    missing = any(re.search(r"No matching distribution found for torch\b", ln) for ln in output) or (
        any(re.search(r"Cannot install torch\b", ln) for ln in output)
        and any(re.search(r"\(constraint\) torch\b.*==[0-9.]+\+\w+", ln) for ln in output))
    if not missing:
        return (f"pip failed (exit code {rc}); its output is in the log above. Behind a proxy or a company "
                "certificate, give the proxy URL or the certificate file and try again.")
    pin = next((c for c in plan.constraints if c.startswith("torch==")), "torch")
    where = (f"PyTorch's index ({_redact_url(unreachable_index)}) could not be reached, and pip's other indexes "
             "do not have it" if unreachable_index else "none of the indexes pip used has it")
    return (f"no {pin} for this Python ({plan.python}) on this system: {where}. Either let "
            "pip reach that index (proxy, certificate) or give a mirror of it as the PyTorch index; or keep a torch "
            "already installed for this Python (--torch system, or \"Keep the torch already installed\" in the "
            "dialog; Debian/Ubuntu: sudo apt install python3-torch).")


def index_reachable(url: str, timeout: float = 10.0, proxy: Optional[str] = None) -> bool:
    """Whether a package index answers at all (any HTTP status counts: only a dead connection does not)."""
    if not url.lower().startswith(("http://", "https://")):
        return True
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    try:
        urllib.request.build_opener(*handlers).open(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False


def _tee(*fns: Log) -> Log:
    def f(line: str) -> None:
        for fn in fns:
            fn(line)
    return f


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m thor_qgis.deps",
                                 description="Install the THOR plugin's Python packages into a folder of its own.")
    sub = ap.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("install", help="install torch, earthengine-api and huggingface_hub")
    ins.add_argument("--target", help=f"folder (default: ${ENV_DIR}, else <QGIS profile>/python/{FOLDER}/{py_tag()})")
    ins.add_argument("--profile", default="default", help="QGIS profile whose folder to use (default: default)")
    ins.add_argument("--torch", default="auto",
                     help="auto (default), cpu, cuda, a CUDA build such as cu128, mps, or system (keep the torch "
                          "this Python already has, e.g. Debian's python3-torch, and install the rest)")
    ins.add_argument("--index-url", help="index for the torch wheels instead of PyTorch's ('none': pip's own)")
    ins.add_argument("--extra-index-url", action="append", default=[], help="another package index (repeatable)")
    ins.add_argument("--proxy", help="proxy for pip, e.g. http://user:password@proxy:3128")
    ins.add_argument("--cert", help="certificate bundle (PEM) for a company TLS proxy")
    ins.add_argument("--with", dest="extras", action="append", default=[], choices=tuple(OPTIONAL),
                     help="an optional package too: dask (grids on a Dask cluster)")
    ins.add_argument("--dry-run", action="store_true", help="print the plan, install nothing")
    rep = sub.add_parser("report", help="print the diagnostics report (Markdown)")
    rep.add_argument("--target", help="the deps folder to describe")
    rem = sub.add_parser("remove", help="delete the deps folder")
    rem.add_argument("--target")
    rem.add_argument("--profile", default="default")
    return ap


def _target_from(ns) -> str:
    if ns.target:
        return os.path.abspath(os.path.expanduser(ns.target))
    return deps_dir(default_profile_dir(profile=getattr(ns, "profile", "default") or "default"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = _parser().parse_args(argv)
    out = sys.stdout
    try:
        if ns.command == "report":
            from .diagnostics import build_report

            out.write(build_report(deps_target=_target_from(ns)) + "\n")
            return 0
        target = _target_from(ns)
        if ns.command == "remove":
            ok, left = remove(target)
            out.write(f"removed {target}\n" if ok else f"removed {target} except (in use): {' '.join(left)}\n")
            return 0
        plan = make_plan(target, torch=ns.torch, index_url=ns.index_url, extra_index_urls=ns.extra_index_url,
                         proxy=ns.proxy, cert=ns.cert, extras=ns.extras)
        out.write(("dry run: nothing is installed\n" if ns.dry_run else "") + plan.describe() + "\n")
        out.flush()
        if ns.dry_run:
            return 0
        res = install(plan, log=lambda s: (out.write(s + "\n"), out.flush()))
        out.write(f"installed into {res.site} in {res.seconds:.1f} s, {res.bytes / 1e6:.0f} MB: "
                  + ", ".join(f"{k} {v}" for k, v in res.versions.items()) + "\n")
        out.write(f"QGIS finds it at {target}" + ("" if not os.environ.get(ENV_DIR) else f" (${ENV_DIR})") + "\n")
        return 0
    except DepsError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except OSError as e:  # e.g. a target folder that cannot be written
        sys.stderr.write(f"error: {e.strerror or e}: {e.filename or ''}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
