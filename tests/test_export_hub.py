"""Issue 19, the Export RPC and the Hub push, through the real daemon and CLI (no network).

- `Export` streams progress: the GGUF writer's stages (fuse, convert per tensor with bytes, write),
  then one `done` message with the path and its record; ExportAdapter (unary) still answers.
- `--format hub` pushes to a local fake of the Hub's upload API (HF_ENDPOINT points at it): the
  adapter in PEFT layout at the top and mlx-lm's in mlx/, a GGUF when asked, the fused model with
  --fused, and README.md, a model card holding the job's own numbers (rows, losses, base, data).
- Every export is recorded with its job: `adapters list` and `jobs show` list them.
- Offline, without a token or with the Hub out of reach, the push fails in about 2 s with UNAVAILABLE.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import DaemonProcess, cli, free_port, json_lines, short_home, write_config

pytestmark = pytest.mark.slow


class FakeHub:
    """Enough of the Hub's API for huggingface_hub's create_repo + create_commit (every file
    'regular', so no LFS): what was created and the files of each commit, decoded."""

    def __init__(self, port: int):
        self.repos, self.commits, self.calls = {}, [], []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                hub.calls.append((path, self.headers.get("authorization", "")))
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}"
                    hub.repos[repo] = req
                    return self._reply(200, {"url": f"http://127.0.0.1:{port}/{repo}"})
                if path == "/api/validate-yaml":
                    return self._reply(200, {})
                parts = path.split("/")   # /api/models/ORG/NAME/(preupload|commit)/main
                if len(parts) == 7 and parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if len(parts) == 7 and parts[5] == "commit":
                    items = [json.loads(line) for line in body.splitlines() if line.strip()]
                    files = {i["value"]["path"]: base64.b64decode(i["value"]["content"])
                             for i in items if i["key"] == "file"}
                    hub.commits.append({"repo": f"{parts[3]}/{parts[4]}", "files": files})
                    return self._reply(200, {"commitUrl": f"http://127.0.0.1:{port}/{parts[3]}/{parts[4]}/commit/"
                                                          + "a" * 40, "commitOid": "a" * 40})
                return self._reply(404, {"error": f"no such route {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hub_daemon(tmp_path_factory):
    """A daemon whose Hub is the fake one, with a token: (daemon, fake hub, port)."""
    port = free_port()
    hub = FakeHub(port)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", "HF_HOME")}
    os.environ.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_fake_token",
                      HF_HOME=str(tmp_path_factory.mktemp("hfhome")))
    try:
        d = DaemonProcess(short_home()).start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield d, hub, port
    d.stop()
    hub.close()


@pytest.fixture(scope="module")
def job(hub_daemon, demo_bundle, tmp_path_factory) -> str:
    """One finished job with evals (torch, 6 steps, eval every 2)."""
    cfg = write_config(tmp_path_factory.mktemp("cfg") / "c.yaml", demo_bundle, backend="torch", max_steps=6,
                       save_steps=1000, eval_steps=2, logging_steps=1)
    return json_lines(cli(hub_daemon[0].home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]


def test_export_streams_progress_per_tensor_then_done_and_is_recorded(hub_daemon, job, tmp_path):
    d = hub_daemon[0]
    out = tmp_path / "t.gguf"
    msgs = list(d.stub().Export(pb.ExportAdapterRequest(adapter=f"job:{job}", format="gguf", out_file=str(out),
                                                        quant="q8_0"), timeout=300))
    stages = [m.stage for m in msgs]
    assert stages[0] == "fuse" and stages[-1] == "done" and "write" in stages
    convert = [m for m in msgs if m.stage == "convert"]
    assert len(convert) > 5 and all(m.bytes_total == convert[0].bytes_total > 0 for m in convert)
    assert [m.bytes_done for m in convert] == sorted(m.bytes_done for m in convert)
    assert convert[-1].bytes_done == convert[-1].bytes_total
    last = msgs[-1]
    assert last.done and last.path == str(out) and sum(m.done for m in msgs) == 1
    assert (last.record.format, last.record.quant, last.record.job_id) == ("gguf", "q8_0", job)
    assert last.record.size_bytes == out.stat().st_size and last.record.target == str(out)

    # the unary RPC shares the implementation, and the CLI draws the stream (lines off a terminal)
    peft = tmp_path / "peft"
    assert d.stub().ExportAdapter(pb.ExportAdapterRequest(adapter=job, out_dir=str(peft))).path == str(peft)
    p = cli(d.home, "export", f"job:{job}", "--format", "mlx", "-o", str(tmp_path / "mlx"), check=True)
    assert f"wrote {tmp_path / 'mlx'}" in p.stdout

    listed = next(a for a in json_lines(cli(d.home, "adapters", "list", "--json", check=True).stdout)
                  if a["job_id"] == job)
    got = [(e["format"], e.get("layout", ""), e.get("quant", ""), e["target"]) for e in listed["exports"]]
    assert got[:3] == [("gguf", "", "q8_0", str(out)), ("adapter", "peft", "", str(peft)),
                       ("adapter", "mlx", "", str(tmp_path / "mlx"))]
    shown = json.loads(cli(d.home, "jobs", "show", job, "--json", check=True).stdout)
    assert [e["target"] for e in shown["exports"]][:3] == [str(out), str(peft), str(tmp_path / "mlx")]
    text = cli(d.home, "jobs", "show", job, check=True).stdout
    assert "exported" in text and "gguf q8_0" in text and str(out) in text


def test_hub_push_uploads_both_layouts_a_gguf_and_a_card_with_the_jobs_numbers(hub_daemon, job):
    d, hub, port = hub_daemon
    started = time.monotonic()
    p = cli(d.home, "export", f"job:{job}", "--format", "hub", "--repo", "me/tuned", "--gguf", "f16", "--json",
            check=True)
    got = json_lines(p.stdout)[-1]
    assert got["path"] == f"http://127.0.0.1:{port}/me/tuned" and got["format"] == "hub"
    assert hub.repos["me/tuned"]["organization"] == "me" and hub.repos["me/tuned"].get("visibility") != "private"
    assert all(auth == "Bearer hf_fake_token" for _, auth in hub.calls)
    files = hub.commits[-1]["files"]
    adapter = Path(json.loads(cli(d.home, "jobs", "show", job, "--json", check=True).stdout)["adapter_path"])
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    assert files["mlx/adapters.safetensors"] == (adapter / "mlx" / "adapters.safetensors").read_bytes()
    assert {"adapter_config.json", "mlx/adapter_config.json", "tuned-f16.gguf", "README.md", "loss.svg"} <= set(files)
    assert files["tuned-f16.gguf"][:4] == b"GGUF" and files["loss.svg"].startswith(b"<svg")
    assert not any(".tunerd-output" in f for f in files)

    # the card: the job's real numbers, from its record and events
    card = files["README.md"].decode()
    events = [e for e in json_lines(cli(d.home, "jobs", "watch", job, "--no-follow", "--json", check=True).stdout)]
    started_ev = next(e["started"] for e in events if "started" in e)
    finished = next(e["finished"] for e in events if "finished" in e)
    evals = [e["eval"] for e in events if "eval" in e]
    best = min(evals, key=lambda e: e["eval_loss"])
    assert f"{started_ev['train_rows']} train, {started_ev['eval_rows']} validation" in card
    assert f"| final train loss | {finished['final_loss']:.4f} |" in card
    assert f"| best eval loss | {best['eval_loss']:.4f} (step {best['step']}) |" in card
    assert f"| final eval loss | {evals[-1]['eval_loss']:.4f} |" in card
    assert "base_model: model" in card and Path(finished["adapter_path"]).parent.as_posix() not in card
    for how in ("AutoPeftModelForCausalLM", "mlx_lm.generate", "llama-cli", "ollama run hf.co/me/tuned"):
        assert how in card
    assert "![training and eval loss](loss.svg)" in card and "learning_rate: 0.003" in card

    # the fused model, private; both pushes are recorded with the job
    cli(d.home, "export", job, "--format", "hub", "--repo", "me/fused", "--fused", "--private", check=True)
    assert hub.repos["me/fused"]["visibility"] == "private"
    files = hub.commits[-1]["files"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files) and "adapter_model.safetensors" not in files
    assert "AutoModelForCausalLM" in files["README.md"].decode()
    listed = next(a for a in json_lines(cli(d.home, "adapters", "list", "--json", check=True).stdout)
                  if a["job_id"] == job)
    hubs = [e for e in listed["exports"] if e["format"] == "hub"]
    assert [(e["target"], e.get("layout"), e.get("quant", "")) for e in hubs] == [
        (f"http://127.0.0.1:{port}/me/tuned", "adapter", "f16"), (f"http://127.0.0.1:{port}/me/fused", "fused", "")]
    assert time.monotonic() - started < 120


def test_hub_out_of_reach_fails_fast_with_unavailable(hub_daemon, job):
    d, hub, port = hub_daemon
    hub.close()   # nothing listens on the endpoint any more
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        list(d.stub().Export(pb.ExportAdapterRequest(adapter=job, format="hub", repo="me/gone"), timeout=30))
    assert time.monotonic() - started < 2.5
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "out of reach" in e.value.details()
    p = cli(d.home, "export", job, "--format", "hub", "--repo", "not a repo", "--json")
    assert json_lines(p.stdout)[-1]["error"]["code"] == "INVALID_ARGUMENT"


def test_offline_or_without_a_token_the_push_fails_at_once(monkeypatch, tmp_path):
    """check_hub, the first thing a push does: HF_HUB_OFFLINE, no token, an endpoint out of reach
    (a name that does not resolve, as offline; an address that never answers meets the 2 s connect
    timeout, which this sandbox cannot show: its proxy accepts every connect)."""
    from huggingface_hub import constants

    from tunerd.export.hub import check_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        check_hub("me/x")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(ConnectionError, match="no Hugging Face token"):
        check_hub("me/x")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")   # a name that never resolves
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="out of reach"):
        check_hub("me/x")
    assert time.monotonic() - started < 2.5
