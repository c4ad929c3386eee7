"""The diagnostics report: everything a bug report about the plugin's set-up needs, as Markdown.

Plain Python (no qgis import): the QGIS-specific facts (QGIS and Qt versions, the profile, the Earth Engine
project setting) are gathered by the plugin and passed in as ``facts``; run headless
(``python3 -m thor_qgis.deps report``) those lines say "not known".

torch is examined in a separate Python process unless it is already imported, so a broken installation cannot
crash QGIS while the user is trying to report it. Credentials are never read: the report says only whether
the files exist.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from . import deps
from .specs import MODEL_VARIANTS

UNKNOWN = "not known (run from QGIS)"
EE_PROJECT_ENV = ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT")


def hub_cache_dir(env: Optional[Mapping[str, str]] = None) -> str:
    """The Hugging Face hub cache folder, resolved the way huggingface_hub documents it."""
    env = os.environ if env is None else env
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var, "").strip():
            return os.path.expanduser(env[var].strip())
    home = env.get("HF_HOME", "").strip()
    if not home:
        xdg = env.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def cached_checkpoints(cache: str) -> List[Dict[str, object]]:
    """THOR checkpoints present in the hub cache: model key, repo, file, revision, size."""
    out = []
    for v in MODEL_VARIANTS.values():
        snaps = os.path.join(cache, "models--" + v.hub_repo.replace("/", "--"), "snapshots")
        if not os.path.isdir(snaps):
            continue
        for rev in sorted(os.listdir(snaps)):
            f = os.path.join(snaps, rev, v.hub_file)
            if os.path.isfile(f):
                out.append({"model": v.key, "repo": v.hub_repo, "file": v.hub_file, "revision": rev,
                            "bytes": os.path.getsize(f)})
    return out


def ee_credentials(env: Optional[Mapping[str, str]] = None) -> List[Tuple[str, str, bool]]:
    """(kind, path, exists) for each place Earth Engine credentials may be; the files are never opened."""
    env = os.environ if env is None else env
    home = os.path.expanduser("~")
    persistent = os.path.join(home, ".config", "earthengine", "credentials")
    gcloud = env.get("CLOUDSDK_CONFIG", "").strip() or (
        os.path.join(env.get("APPDATA", ""), "gcloud") if os.name == "nt" else os.path.join(home, ".config", "gcloud"))
    rows = [("earthengine authenticate (persistent credentials)", persistent, os.path.isfile(persistent)),
            ("gcloud application default credentials", os.path.join(gcloud, "application_default_credentials.json"),
             os.path.isfile(os.path.join(gcloud, "application_default_credentials.json")))]
    adc = env.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if adc:
        rows.append(("GOOGLE_APPLICATION_CREDENTIALS", adc, os.path.isfile(adc)))
    return rows


def _gdal_proj() -> Tuple[str, str]:
    try:
        from osgeo import gdal, osr

        gv = gdal.VersionInfo("RELEASE_NAME")
        try:
            pv = "%d.%d.%d" % (osr.GetPROJVersionMajor(), osr.GetPROJVersionMinor(), osr.GetPROJVersionMicro())
        except Exception:
            pv = "unknown"
        return gv, pv
    except Exception as e:  # no GDAL bindings at all
        return f"not importable ({type(e).__name__})", "unknown"


def _module_row(name: str, data: Dict) -> str:
    m = data.get("modules", {}).get(name)
    if m is None:
        return "not checked"
    if "error" in m:
        return f"not importable: {m['error']}"
    return f"{m.get('version') or '?'} ({m.get('file') or '?'})"


def _in_process_probe(modules: Sequence[str]) -> Dict:
    """The same data as deps.probe, from modules already imported in this process."""
    out: Dict = {"modules": {}}
    for name in modules:
        m = sys.modules.get(name)
        if m is not None:
            out["modules"][name] = {"version": str(getattr(m, "__version__", "") or ""),
                                    "file": getattr(m, "__file__", "") or ""}
    t = sys.modules.get("torch")
    if t is not None:
        info = {"cuda": getattr(t.version, "cuda", None), "devices": ["cpu"]}
        try:
            if t.cuda.is_available():
                info["devices"] += [f"cuda:{i} {t.cuda.get_device_name(i)}" for i in range(t.cuda.device_count())]
        except Exception as e:
            info["cuda_error"] = str(e)
        try:
            if t.backends.mps.is_available():
                info["devices"].append("mps")
        except Exception:
            pass
        out["torch"] = info
    return out


def torch_build(info: Optional[Dict], version: str = "") -> str:
    if not info:
        return "—"
    if info.get("cuda"):
        return f"CUDA {info['cuda']}"
    if "mps" in info.get("devices", []) or platform.system() == "Darwin":
        return "MPS (Apple Metal)" if "mps" in info.get("devices", []) else "CPU (macOS wheel)"
    return "CPU"


def collect(facts: Optional[Mapping[str, object]] = None, deps_target: Optional[str] = None,
            python: Optional[str] = None, timeout: float = 180.0) -> Dict:
    """Everything the report shows, as a dict (see :func:`to_markdown`)."""
    facts = dict(facts or {})
    target = deps_target or deps.deps_dir(facts.get("profile_dir") or None)
    site = deps.active_site(target)
    modules = [p[0] for p in deps.PACKAGES]
    probe_how = "in this process"
    if all(m in sys.modules for m in modules):
        data = _in_process_probe(modules)
    else:
        try:
            py = python or deps.find_python()
            data = deps.probe(py, [site] if site else [], modules, timeout=timeout)
            probe_how = f"in a separate process ({py})"
        except Exception as e:  # no interpreter found: report what this process has
            data = _in_process_probe(modules)
            probe_how = f"in this process (no separate Python: {e})"
    gdal_v, proj_v = _gdal_proj()
    try:
        import numpy

        numpy_v = f"{numpy.__version__} ({numpy.__file__})"
    except Exception as e:
        numpy_v = f"not importable ({type(e).__name__})"
    torch_data = data.get("torch")
    torch_v = data.get("modules", {}).get("torch", {}).get("version", "")
    project = str(facts.get("ee_project") or "").strip()
    if not project:
        project = next((os.environ[v].strip() for v in EE_PROJECT_ENV if os.environ.get(v, "").strip()), "")
    cache = hub_cache_dir()
    contents = deps.folder_contents(target)
    return {
        "plugin_version": facts.get("plugin_version") or UNKNOWN,
        "qgis": facts.get("qgis_version") or UNKNOWN,
        "qt": facts.get("qt_version") or UNKNOWN,
        "pyqt": facts.get("pyqt_version") or UNKNOWN,
        "python": f"{sys.version.split()[0]} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "gdal": gdal_v,
        "proj": proj_v,
        "numpy": numpy_v,
        "probe": probe_how,
        "torch": _module_row("torch", data),
        "torch_build": torch_build(torch_data, torch_v) if torch_data else "—",
        "torch_devices": ", ".join(torch_data.get("devices", [])) if torch_data else "—",
        "earthengine_api": _module_row("ee", data),
        "huggingface_hub": _module_row("huggingface_hub", data),
        "deps_dir": target,
        "deps_env": bool(os.environ.get(deps.ENV_DIR, "").strip()),
        "deps_active": site,
        "deps_on_sys_path": bool(site and site in sys.path),
        "deps_marker": contents["marker"],
        "deps_distributions": contents["distributions"],
        "deps_bytes": contents["bytes"],
        "hub_cache": cache,
        "checkpoints": cached_checkpoints(cache),
        "ee_project": project or "not set",
        "ee_api_url": facts.get("ee_api_url") or os.environ.get("THOR_EE_API_URL", "") or "Google's default",
        "ee_credentials": ee_credentials(),
    }


def to_markdown(r: Mapping[str, object]) -> str:
    L = ["## THOR for QGIS diagnostics", "",
         "| component | version |", "|---|---|"]
    for label, key in (("THOR plugin", "plugin_version"), ("QGIS", "qgis"), ("Qt", "qt"), ("PyQt", "pyqt"),
                       ("Python", "python"), ("Platform", "platform"), ("GDAL", "gdal"), ("PROJ", "proj"),
                       ("numpy", "numpy"), ("torch", "torch"), ("torch build", "torch_build"),
                       ("torch devices", "torch_devices"), ("earthengine-api", "earthengine_api"),
                       ("huggingface_hub", "huggingface_hub")):
        L.append(f"| {label} | {_cell(r[key])} |")
    L += ["", f"Packages examined {r['probe']}.", "", "### Dependency folder", "",
          f"- folder: `{r['deps_dir']}`" + (" (from THOR_DEPS_DIR)" if r["deps_env"] else ""),
          f"- in use: {'yes, `' + str(r['deps_active']) + '`' if r['deps_active'] else 'no (nothing installed there)'}"
          + ("" if not r["deps_active"] else (" — on sys.path" if r["deps_on_sys_path"] else " — not on sys.path"))]
    marker = r.get("deps_marker") or {}
    if marker:
        L.append(f"- installed {marker.get('installed', '?')}, build {marker.get('build', '?')}, "
                 f"index {marker.get('torch_index') or 'pip default'}")
    dists = r.get("deps_distributions") or {}
    if dists:
        L.append(f"- {len(dists)} distributions, {int(r['deps_bytes']) / 1e6:.0f} MB: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(dists.items(), key=lambda kv: kv[0].lower())))
    L += ["", "### Weights", "", f"- Hugging Face hub cache: `{r['hub_cache']}`"]
    cks = r.get("checkpoints") or []
    if cks:
        for c in cks:
            L.append(f"- cached: {c['model']} ({c['repo']}/{c['file']}, revision {str(c['revision'])[:12]}, "
                     f"{int(c['bytes']) / 1e6:.0f} MB)")
    else:
        L.append("- cached THOR checkpoints: none")
    L += ["", "### Earth Engine", "", f"- project: {r['ee_project']}", f"- API URL: {r['ee_api_url']}"]
    for kind, path, exists in r["ee_credentials"]:
        L.append(f"- {kind}: {'present' if exists else 'absent'} (`{path}`)")
    return "\n".join(L) + "\n"


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def build_report(facts: Optional[Mapping[str, object]] = None, deps_target: Optional[str] = None,
                 python: Optional[str] = None) -> str:
    return to_markdown(collect(facts, deps_target, python))
