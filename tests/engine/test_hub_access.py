"""Weights from the Hugging Face hub when they are not cached: a quick reachability decision instead of the
client's long retries, and a download that reports its progress in bytes. Runs against local stand-ins of
the Hub (a hung server, a closed port, a small file server speaking the Hub's download protocol)."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from thor_qgis.embedder import Embedder
    from thor_qgis.errors import ThorWeightsError
    from thor_qgis.specs import ModelSpec
    logs = []
    try:
        emb = Embedder(ModelSpec(model_key="thor_v1_tiny", weights="hub", device="cpu"), log=logs.append)
    except ThorWeightsError as exc:
        print(json.dumps({"error": str(exc), "logs": logs}))
        raise SystemExit(0)
    print(json.dumps({"metadata": emb.metadata, "logs": logs}))
""")


def _run(tmp_path, endpoint, probe_timeout="2"):
    hub = tmp_path / "hf_home" / "hub"
    hub.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(hub), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_ENDPOINT": endpoint, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "THOR_HUB_PROBE_TIMEOUT": probe_timeout})
    env.pop("RS_EMBED_THOR_CKPT", None)
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(REPO)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), hub


def test_hub_that_never_answers_is_given_up_after_one_short_probe(tmp_path):
    """A server that accepts connections and never answers (a dead proxy, a black hole): one probe with
    the probe timeout, then a message naming the dialog's fields; the Hub client is never started."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=accept, daemon=True).start()
    try:
        out, _ = _run(tmp_path, f"http://127.0.0.1:{server.getsockname()[1]}", probe_timeout="1")
    finally:
        server.close()
        for c in accepted:
            c.close()
    msg = out["error"]
    assert "cannot be reached" in msg and "within 1 s" in msg
    assert "'Local checkpoint' (CHECKPOINT)" in msg and "'Use the pretrained weights' (PRETRAINED)" in msg
    assert len(accepted) == 1, "only the probe may have connected"
    assert any("not cached yet" in line for line in out["logs"])
    assert not any("from the Hugging Face cache" in line for line in out["logs"])


def test_closed_port_is_unreachable(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out, _ = _run(tmp_path, f"http://127.0.0.1:{port}")
    assert "cannot be reached" in out["error"] and "refused" in out["error"].lower()


@pytest.fixture(scope="module")
def tiny_hub_file(tmp_path_factory):
    """A tiny THOR checkpoint in the hub's format (``encoder.*`` keys), made from the random-init rule."""
    from thor_qgis.specs import ModelSpec
    from thor_qgis.weights import load_builtin_encoder

    encoder, _, _ = load_builtin_encoder(ModelSpec(model_key="thor_v1_tiny", weights="random"))
    path = tmp_path_factory.mktemp("hubfile") / "thor_v1_vit_tiny.pt"
    torch.save({"encoder." + k: v for k, v in encoder.state_dict().items()}, path)
    return path


def test_download_reports_progress_in_megabytes_and_is_then_cached(tmp_path, tiny_hub_file):
    data = tiny_hub_file.read_bytes()
    etag = hashlib.sha256(data).hexdigest()
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    requests = []

    class Hub(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _headers(self):
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

        def do_HEAD(self):  # noqa: N802
            requests.append(("HEAD", self.path))
            if self.path.startswith("/api/"):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/FM4CS/THOR-1.0-tiny/resolve/main/thor_v1_vit_tiny.pt":
                self.send_response(200)
                self._headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_GET(self):  # noqa: N802
            requests.append(("GET", self.path))
            if self.path != "/FM4CS/THOR-1.0-tiny/resolve/main/thor_v1_vit_tiny.pt":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self._headers()
            for i in range(0, len(data), 1 << 20):
                self.wfile.write(data[i:i + (1 << 20)])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, hub = _run(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert "error" not in out, out
    assert out["metadata"]["weights"]["source"] == "hub"
    assert out["metadata"]["weights"]["revision"] == commit
    progress = [line for line in out["logs"] if line.startswith("Downloading thor_v1_vit_tiny.pt:")]
    total_mb = f"of {len(data) / 2**20:.0f} MB"
    assert progress and all(total_mb in line for line in progress), out["logs"]
    assert progress[-1].endswith("(100 %)")
    assert ("GET", "/FM4CS/THOR-1.0-tiny/resolve/main/thor_v1_vit_tiny.pt") in requests
    cached = list(hub.glob("models--FM4CS--THOR-1.0-tiny/snapshots/*/thor_v1_vit_tiny.pt"))
    assert len(cached) == 1 and cached[0].read_bytes() == data
