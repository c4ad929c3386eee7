#!/usr/bin/env bash
# Set up what is missing for running and testing the plugin from this checkout, and nothing else.
#
#   - Debian's QGIS stack (qgis_process.bin, python3-qgis, GDAL) when it is absent;
#   - a virtual environment at .venv made from the system Python (which is the one QGIS embeds),
#     with system site packages, holding the pinned Python dependencies (CPU torch, earthengine-api,
#     huggingface_hub, pytest, pytest-qgis);
#   - torch: on Debian 12 (Python 3.11) the pinned CPU build from pip (2.13.0+cpu, ~200 MB). Where no
#     CPU build exists for the system Python (Debian 13: Python 3.13; PyPI has only the 2.7 GB CUDA
#     build), Debian's own python3-torch (CPU, ~780 MB, shared by all environments) when apt has it.
#     THOR_TORCH=pip or THOR_TORCH=system forces one or the other; THOR_TORCH=pip falls back to PyPI's
#     CUDA build (it runs on the CPU) when no CPU build can be had, and pip's cache keeps it for next time;
#   - the system's numpy and GDAL are never replaced: numpy<2 (constraints.txt) applies only where the
#     system numpy is 1.x (Debian 12), as QGIS's GDAL bindings are built against it;
#   - a QGIS profile and plugin folder under .build/ that the qgis_process wrapper uses.
#
# Safe to run again: on a ready machine it only checks, in a few seconds.
# Run it (bash scripts/setup.sh); it prints what it does on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
BUILD="$ROOT/.build"
PLUGIN_NAME="thor_embeddings"
SYS_PY=/usr/bin/python3

say() { echo "[setup] $*" >&2; }

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root for: $*"; exit 1; fi
}

# What the system Python brings: its version, numpy's major version, whether a CPU torch build is pinned
# for it (constraints.txt pins torch==X+cpu: PyTorch publishes those up to the Python versions of its
# release, but package indexes such as PyPI do not serve them).
py_version() { $SYS_PY -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# 1. QGIS, its Python bindings and GDAL, from Debian.
if [ ! -x /usr/bin/qgis_process.bin ] || ! $SYS_PY -c "import qgis.core, osgeo.gdal" 2>/dev/null \
   || ! $SYS_PY -c "import venv, ensurepip" 2>/dev/null || ! $SYS_PY -m pip --version >/dev/null 2>&1; then
    # python3-pip: the plugin's own installer (python3 -m thor_qgis.deps) runs pip with QGIS's Python
    say "installing QGIS (Debian packages qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv python3-pip)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv python3-pip >/dev/null
fi

# 2. The virtual environment, from the system Python so that `import qgis` works inside it.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import qgis.core" 2>/dev/null; then
    say "creating $VENV"
    rm -rf "$VENV"
    $SYS_PY -m venv --system-site-packages "$VENV"
fi

# 3. torch: pip's CPU build where one exists for this Python (Debian 12), else Debian's python3-torch.
torch_mode="${THOR_TORCH:-}"
if [ -z "$torch_mode" ]; then
    if [ "$(py_version)" = "3.11" ]; then
        torch_mode=pip
    elif $SYS_PY -c "import torch" 2>/dev/null || apt-cache show python3-torch >/dev/null 2>&1; then
        torch_mode=system
    else
        torch_mode=pip
    fi
fi
case "$torch_mode" in pip|system) ;; *) say "THOR_TORCH must be pip or system, not $torch_mode"; exit 1;; esac
if [ "$torch_mode" = system ] && ! $SYS_PY -c "import torch" 2>/dev/null; then
    say "installing Debian's python3-torch (CPU build, for all Python environments of this machine)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch >/dev/null
fi

# 4. Python dependencies, re-installed only when the pins, the torch choice or the system numpy change, or an
#    import fails. The files given to pip are derived from requirements.txt and constraints.txt:
#    without torch when the system's is used, and without numpy<2 when the system numpy is 2.x.
numpy_major="$($SYS_PY -c 'import numpy; print(numpy.__version__.split(".")[0])' 2>/dev/null || echo none)"
stamp="$VENV/.requirements.sha256"
want="$( (cat "$ROOT/requirements.txt" "$ROOT/constraints.txt"; echo "torch=$torch_mode numpy=$numpy_major") \
         | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || \
   ! "$VENV/bin/python" -c "import torch, ee, huggingface_hub, pytest, pytest_qgis" 2>/dev/null; then
    say "installing Python dependencies (requirements.txt with constraints.txt; torch: $torch_mode)"
    pins="$(mktemp -d)"
    trap 'rm -rf "$pins"' EXIT
    if [ "$torch_mode" = system ]; then
        grep -v -E '^torch([=<>! ]|$)' "$ROOT/requirements.txt" > "$pins/requirements.txt"
        grep -v -E '^torch([=<>! ]|$)' "$ROOT/constraints.txt" > "$pins/constraints.txt"
    else
        cp "$ROOT/requirements.txt" "$pins/requirements.txt"
        cp "$ROOT/constraints.txt" "$pins/constraints.txt"
    fi
    if [ "$numpy_major" != 1 ]; then  # never fight the system numpy 2 (its GDAL bindings need it)
        grep -v -E '^numpy([=<>! ]|$)' "$pins/constraints.txt" > "$pins/c" && mv "$pins/c" "$pins/constraints.txt"
    fi
    pip_install() { "$VENV/bin/python" -m pip install -q -r "$pins/requirements.txt" -c "$pins/constraints.txt" "$@"; }
    if [ "$torch_mode" = system ]; then
        pip_install
    else
        # the CPU build of torch (2.13.0+cpu) comes from pip's configured indexes when they have it, else
        # from PyTorch's own CPU index, else (no CPU build reachable) PyPI's default build of the same
        # version: a CUDA build of ~2.7 GB that runs on the CPU, kept in pip's cache for the next venv
        pip_install || { say "retrying with PyTorch's CPU wheel index"; \
            pip_install --extra-index-url "${THOR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"; } || {
            say "no CPU build of torch reachable: installing PyPI's torch (CUDA build, ~2.7 GB; runs on the CPU)"
            sed -i -E 's/^(torch==[^+ ]+)\+cpu/\1/' "$pins/constraints.txt"
            # its wheels are kept in a folder of our own (pip's HTTP cache is skipped by proxies that send
            # no-store), so the next venv, here or in another checkout, does not download them again
            wheels="${THOR_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/thor-qgis/wheels}"
            mkdir -p "$wheels"
            "$VENV/bin/python" -m pip download -q -d "$wheels" --find-links "$wheels" \
                "$(grep -E '^torch==' "$pins/constraints.txt")"
            pip_install --find-links "$wheels"; }
    fi
    echo "$want" > "$stamp"
fi

# 5. A plugin folder and a QGIS profile of our own for headless qgis_process runs.
mkdir -p "$BUILD/plugins" "$BUILD/profile" "$BUILD/runtime"
chmod 700 "$BUILD/runtime"
if [ "$(readlink "$BUILD/plugins/$PLUGIN_NAME" 2>/dev/null)" != "$ROOT" ]; then
    rm -rf "${BUILD:?}/plugins/$PLUGIN_NAME"
    ln -s "$ROOT" "$BUILD/plugins/$PLUGIN_NAME"
fi
if ! grep -qs "^$PLUGIN_NAME=true" "$BUILD/profile/profiles/default/QGIS/QGIS3.ini"; then
    say "enabling the plugin in the qgis_process profile"
    "$ROOT/scripts/qgis_process" plugins enable "$PLUGIN_NAME" >/dev/null 2>&1 || true
    grep -qs "^$PLUGIN_NAME=true" "$BUILD/profile/profiles/default/QGIS/QGIS3.ini" || {
        say "could not enable $PLUGIN_NAME in $BUILD/profile"; exit 1; }
fi
say "ready: $VENV"
