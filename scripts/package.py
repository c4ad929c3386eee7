"""Build the plugin zip from exactly the files pb_tool.cfg lists (what `pb_tool zip` ships).

    .venv/bin/python scripts/package.py [--out zip_build]   → zip_build/thor_embeddings.zip
"""
import argparse
import configparser
import os
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".aux.xml")


def shipped_files(root=ROOT):
    """(plugin name, [relative paths]) from pb_tool.cfg."""
    cp = configparser.ConfigParser()
    cp.read(os.path.join(root, "pb_tool.cfg"))
    name = cp.get("plugin", "name")
    files = []
    for key in ("python_files", "main_dialog", "compiled_ui_files", "resource_files", "extras"):
        files += cp.get("files", key, fallback="").split()
    for d in cp.get("files", "extra_dirs", fallback="").split():
        for base, dirs, names in os.walk(os.path.join(root, d)):
            dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
            for n in sorted(names):
                if not n.endswith(SKIP_SUFFIXES):
                    files.append(os.path.relpath(os.path.join(base, n), root))
    return name, files


def build_zip(out_dir):
    name, files = shipped_files()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in files:
            z.write(os.path.join(ROOT, rel), f"{name}/{rel}")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "zip_build"))
    print(build_zip(ap.parse_args().out))
