#!/usr/bin/env bash
# Set up what is missing for running and testing the plugin from this checkout, and nothing else.
#
#   - Debian's QGIS stack (qgis_process.bin, python3-qgis, GDAL) when it is absent;
#   - a virtual environment at .venv made from the system Python (which is the one QGIS embeds),
#     with system site packages, holding the pinned Python dependencies (CPU torch, earthengine-api,
#     huggingface_hub, pytest, pytest-qgis);
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

# 1. QGIS, its Python bindings and GDAL, from Debian.
if [ ! -x /usr/bin/qgis_process.bin ] || ! $SYS_PY -c "import qgis.core, osgeo.gdal" 2>/dev/null \
   || ! $SYS_PY -c "import venv, ensurepip" 2>/dev/null; then
    say "installing QGIS (Debian packages qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv >/dev/null
fi

# 2. The virtual environment, from the system Python so that `import qgis` works inside it.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import qgis.core" 2>/dev/null; then
    say "creating $VENV"
    rm -rf "$VENV"
    $SYS_PY -m venv --system-site-packages "$VENV"
fi

# 3. Python dependencies, re-installed only when the pins change or an import fails.
stamp="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || \
   ! "$VENV/bin/python" -c "import torch, ee, huggingface_hub, pytest, pytest_qgis" 2>/dev/null; then
    say "installing Python dependencies (requirements.txt with constraints.txt)"
    pip_install() { "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt" "$@"; }
    # the CPU build of torch (2.13.0+cpu) comes from pip's configured indexes when they have it, else
    # from PyTorch's own CPU index
    pip_install || { say "retrying with PyTorch's CPU wheel index"; \
        pip_install --extra-index-url "${THOR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"; }
    echo "$want" > "$stamp"
fi

# 4. A plugin folder and a QGIS profile of our own for headless qgis_process runs.
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
