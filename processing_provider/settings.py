"""The provider's settings page: *Settings ▸ Options ▸ Processing ▸ Providers ▸ THOR embeddings*.

Registered with Processing's own configuration (``ProcessingConfig``) when the provider loads, so QGIS shows
them in its options dialog; stored in the user profile like every Processing setting. The algorithms read
them with :func:`value`, through QgsSettings only (no import of the Processing plugin in a worker).
Environment variables, where they exist, still win (they are how headless and cluster runs are set up).
"""
import os
from typing import Any, List

from qgis.core import QgsSettings

GROUP = "THOR embeddings"
PREFIX = "Processing/Configuration/"  # where ProcessingConfig stores a setting called NAME

EE_PROJECT = "THOR_EE_PROJECT"
EE_API_URL = "THOR_EE_API_URL"
CACHE_DIR = "THOR_CACHE_DIR"
CACHE_MAX_MB = "THOR_CACHE_MAX_MB"
DEVICE = "THOR_DEFAULT_DEVICE"
DEPS_DIR = "THOR_DEPS_DIR"

# settings of an earlier release (plain QgsSettings keys without a page), still honoured when the new one
# is empty
_LEGACY = {EE_PROJECT: "thor/ee_project", EE_API_URL: "thor/ee_api_url"}

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # stored as an index: append only


def _definitions():
    """(name, description, default, kind) of every setting, in the order the page lists them."""
    return [
        (EE_PROJECT, "Earth Engine: Google Cloud project (default of the algorithms' project field)", "", "text"),
        (EE_API_URL, "Earth Engine: API endpoint (empty: Google's; $THOR_EE_API_URL wins)", "", "text"),
        (CACHE_DIR, "Earth Engine: folder of the imagery cache (empty: ~/.cache/thor_qgis/ee; "
                    "$THOR_CACHE_DIR wins)", "", "folder"),
        (CACHE_MAX_MB, "Earth Engine: largest size of the imagery cache in MB (oldest files removed at start; "
                       "0: no limit)", 2048, "number"),
        (DEVICE, "Default device for the model (auto: a CUDA GPU, else Apple MPS, when PyTorch sees one)", "auto",
         "device"),
        (DEPS_DIR, "Folder of the plugin's own Python packages (empty: in the QGIS profile; "
                   "$THOR_DEPS_DIR wins)", "", "folder"),
    ]


def value(name: str, default: Any = "") -> Any:
    """A setting's value (from the profile), else its legacy key's, else ``default``."""
    settings = QgsSettings()
    try:
        v = settings.value(PREFIX + name, None)
        if v in (None, "") and name in _LEGACY:
            v = settings.value(_LEGACY[name], None)
    except Exception:  # a broken profile must not break an algorithm
        return default
    if v in (None, ""):
        return default
    return v.strip() if isinstance(v, str) else v


def text(name: str, env_var: str = "") -> str:
    """A text setting, with ``env_var`` (when given and set) winning."""
    if env_var and os.environ.get(env_var, "").strip():
        return os.environ[env_var].strip()
    return str(value(name, "") or "")


def number(name: str, default: float) -> float:
    try:
        return float(value(name, default))
    except (TypeError, ValueError):
        return default


def default_device() -> str:
    """The device setting (Processing stores a choice as its index)."""
    v = str(value(DEVICE, "auto") or "auto").strip().lower()
    if v.isdigit() and int(v) < len(DEVICE_CHOICES):
        return DEVICE_CHOICES[int(v)]
    return v if v in DEVICE_CHOICES else "auto"


class SettingsPage:
    """Adds the settings to Processing's configuration for as long as the provider is loaded."""

    def __init__(self):
        self._names: List[str] = []

    def register(self) -> bool:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # Processing plugin not loaded (a bare embedding of QGIS): nothing to show
            return False
        for name, description, default, kind in _definitions():
            if kind == "folder":
                setting = Setting(GROUP, name, description, default, valuetype=Setting.FOLDER)
            elif kind == "number":
                setting = Setting(GROUP, name, description, default, valuetype=Setting.INT)
            elif kind == "device":
                setting = Setting(GROUP, name, description, default, valuetype=Setting.SELECTION,
                                  options=list(DEVICE_CHOICES))
            else:
                setting = Setting(GROUP, name, description, default)
            ProcessingConfig.addSetting(setting)
            self._names.append(name)
        ProcessingConfig.readSettings()
        return True

    def unregister(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        for name in self._names:
            ProcessingConfig.removeSetting(name)
        self._names = []
