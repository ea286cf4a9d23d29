"""Hub downloads report progress and fail fast (tunerd.models.download), against a fake hub.

The fake hub is a real HTTP server on 127.0.0.1 that answers the few endpoints huggingface_hub
uses to fetch a model (model info with file sizes, HEAD/GET resolve/<rev>/<file>, the file tree)
for one repo made from the tiny demo model. Nothing leaves the machine; the HF cache is in tmp.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc
import pytest

from daemon_utils import SLACK
from tunerd.models import download
from tunerd.models.download import Download

REPO = "tiny-org/tiny-llama"
REPOS = [REPO] + [f"tiny-org/tiny-llama-{i}" for i in range(1, 4)]   # the same files under other names
SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(ThreadingHTTPServer):
    """`files`: name -> bytes of each repo in REPOS; `requests`: the paths asked for."""
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.requests = files, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, doc, head=False):
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, head)

    def _not_found(self, code: str, head=False):
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"}, head)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):
        path = unquote(urlsplit(self.path).path)
        files = self.server.files
        self.server.requests.append(f"{self.command} {path}")
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            repo = "/".join(rest.split("/")[:2])
            if repo not in REPOS:
                return self._not_found("RepoNotFound", head)
            rest = rest[len(repo):]
            if rest == "" or rest.startswith("/revision/"):
                return self._json({"id": repo, "modelId": repo, "sha": SHA, "private": False, "siblings": [
                    {"rfilename": n, "size": len(b), "blobId": _etag(b)} for n, b in files.items()]}, head)
            if rest.startswith("/tree/"):
                sub = rest.split("/", 3)[3] if rest.count("/") >= 3 else ""
                if sub:
                    return self._not_found("EntryNotFound", head)
                return self._json([{"type": "file", "path": n, "size": len(b), "oid": _etag(b)}
                                   for n, b in files.items()], head)
            return self._not_found("EntryNotFound", head)
        repo, _, rest = path[1:].partition("/resolve/")
        if repo not in REPOS:
            return self._not_found("RepoNotFound", head)
        name = rest.split("/", 1)[1]
        if name not in files:
            return self._not_found("EntryNotFound", head)
        body = files[name]
        self._send(200, body, {"X-Repo-Commit": SHA, "ETag": f'"{_etag(body)}"',
                               "Content-Type": "application/octet-stream"}, head)


def _etag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def hub(tiny_model_dir):
    files = {p.name: p.read_bytes() for p in sorted(Path(tiny_model_dir).iterdir()) if p.is_file()}
    files["README.md"] = b"# not fetched: no backend reads it\n"
    server = FakeHub(files)
    yield server
    server.shutdown()


@pytest.fixture
def online(hub, tmp_path, monkeypatch):
    """huggingface_hub in this process pointed at the fake hub, with an empty cache in tmp."""
    from huggingface_hub import constants
    use_endpoint(monkeypatch, hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(download, "_fetched", {})
    monkeypatch.setattr(download, "REPORT_SECONDS", 0.0)
    hub.requests.clear()
    return hub


def use_endpoint(monkeypatch, url: str) -> None:
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_reports_each_file_and_the_bytes_then_done(online, tiny_model_dir, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)   # several updates per weights file
    seen: list[Download] = []
    folder = download.fetch(REPO, progress=seen.append)
    wanted = {n: len(b) for n, b in online.files.items() if n != "README.md"}
    assert "model.safetensors" in wanted and set(wanted) == {p.name for p in Path(folder).iterdir()}
    weights_file = "model.safetensors"
    assert (Path(folder) / weights_file).read_bytes() == (Path(tiny_model_dir) / weights_file).read_bytes()
    assert {d.file for d in seen} - {""} == set(wanted)
    assert all(d.model == REPO and d.files_total == len(wanted) and d.bytes_total == sum(wanted.values())
               for d in seen)
    assert [d.bytes_done for d in seen] == sorted(d.bytes_done for d in seen)   # never goes back
    weights = [d.file_bytes_done for d in seen if d.file == "model.safetensors"]
    assert weights[0] == 0 and weights[-1] == wanted["model.safetensors"] and len(weights) > 4
    assert weights == sorted(weights) and 0 < weights[2] < weights[-1]
    last = seen[-1]
    assert last.done and last.files_done == len(wanted) and last.bytes_done == last.bytes_total
    assert last.bytes_per_second > 0 and last.eta_seconds == 0
    assert not any(r.endswith("README.md") for r in online.requests)


def test_a_cached_model_reports_nothing_and_is_not_fetched_again(online):
    download.fetch(REPO)
    download._fetched.clear()          # another daemon process: only the listing is asked for again
    online.requests.clear()
    seen = []
    download.fetch(REPO, progress=seen.append)
    assert seen == [] and online.requests == [f"GET /api/models/{REPO}"]
    online.requests.clear()
    assert list(download.stream(REPO)) == [] and online.requests == []   # this process fetched it


def test_stream_yields_the_progress_of_a_fetch_on_another_thread(online):
    seen = list(download.stream(REPO))
    assert seen and seen[-1].done and all(isinstance(d, Download) for d in seen)


def test_a_missing_repo_fails_at_once_as_not_found(online):
    from tunerd.errors import status_for
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="no model repository tiny-org/nope on the hub") as e:
        download.fetch("tiny-org/nope")
    assert time.monotonic() - t0 < 3 * SLACK
    assert status_for(e.value)[0] == grpc.StatusCode.NOT_FOUND


def test_an_unreachable_hub_fails_at_once_as_unavailable_naming_the_model(online, monkeypatch):
    from tunerd.errors import status_for
    use_endpoint(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"model '{REPO}' cannot be downloaded: the hub .* is out of reach") as e:
        download.fetch(REPO)
    assert time.monotonic() - t0 < 3 * SLACK
    assert status_for(e.value)[0] == grpc.StatusCode.UNAVAILABLE


def test_an_unreachable_hub_uses_a_model_already_in_the_cache(online, monkeypatch):
    folder = download.fetch(REPO)
    download._fetched.clear()
    use_endpoint(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    assert download.fetch(REPO) == folder


def test_an_unreachable_hub_with_only_a_models_config_cached_is_unavailable(online, monkeypatch):
    from huggingface_hub import hf_hub_download
    hf_hub_download(REPO, "config.json")       # what `recommend` reads: no weights
    use_endpoint(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ConnectionError, match="not in the local cache"):
        download.fetch(REPO)


def test_local_paths_and_job_references_are_left_alone(online, tiny_model_dir):
    assert download.fetch(tiny_model_dir) is None and download.fetch("job:abc") is None
    assert list(download.stream(tiny_model_dir)) == [] and online.requests == []


def test_weights_chosen_like_the_backends_read_them():
    assert download.select_files(["config.json", "model-00001-of-00002.safetensors", "consolidated.safetensors",
                                  "pytorch_model.bin", "README.md", "onnx/model.onnx"]) == \
        ["config.json", "model-00001-of-00002.safetensors"]
    assert download.select_files(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]


# -- through the real daemon and tunerctl -------------------------------------------------------

@pytest.fixture(scope="module")
def daemon_online(hub, tmp_path_factory):
    """A real tunerd whose huggingface_hub talks to the fake hub (its own cache in tmp)."""
    import os
    from unittest import mock

    from daemon_utils import DaemonProcess, short_home
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path_factory.mktemp("hf")), "HF_HUB_OFFLINE": "0"}
    with mock.patch.dict(os.environ, env):
        d = DaemonProcess(short_home()).start()
    yield d
    d.stop()


@pytest.mark.slow
def test_models_load_and_chat_show_the_download_in_tunerctl(daemon_online):
    from daemon_utils import cli
    p = cli(daemon_online.home, "models", "load", REPOS[1], check=True)
    assert f"downloading {REPOS[1]}: model.safetensors" in p.stdout
    assert f"downloaded {REPOS[1]}: " in p.stdout and f"loaded {REPOS[1]} on" in p.stdout
    p = cli(daemon_online.home, "chat", "-m", REPOS[2], "-p", "hi", "--max-tokens", "2", check=True)
    assert f"downloading {REPOS[2]}: config.json" in p.stdout and f"downloaded {REPOS[2]}: " in p.stdout
    p = cli(daemon_online.home, "--json", "chat", "-m", REPOS[2], "-p", "hi", "--max-tokens", "2", check=True)
    assert "download" not in p.stdout   # fetched once


@pytest.mark.slow
def test_a_job_on_a_hub_model_streams_its_download_events(daemon_online, demo_bundle, tmp_path):
    from tuner.v1 import tuner_pb2 as pb

    from daemon_utils import write_config
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, model=REPOS[3], max_steps=2, save_steps=2, eval_steps=2)
    stub = daemon_online.stub()
    job = stub.SubmitJob(pb.SubmitJobRequest(config_path=str(cfg)))
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.id, follow=True), timeout=300))
    kinds = [e.WhichOneof("event") for e in events]
    assert "finished" in kinds, [e for e in events if e.WhichOneof("event") in ("failed", "log")]
    downloads = [e.download for e in events if e.WhichOneof("event") == "download"]
    assert downloads and downloads[-1].done and downloads[-1].bytes_done == downloads[-1].bytes_total > 0
    assert kinds.index("download") < kinds.index("started")


@pytest.mark.slow
def test_tunerctl_names_a_missing_or_unreachable_model_within_seconds(daemon_online):
    from daemon_utils import cli
    t0 = time.monotonic()
    p = cli(daemon_online.home, "models", "load", "tiny-org/nope")
    assert p.returncode != 0 and "no model repository tiny-org/nope on the hub" in p.stdout + p.stderr
    p = cli(daemon_online.home, "chat", "-m", "tiny-org/nope", "-p", "hi")
    assert p.returncode != 0 and "no model repository tiny-org/nope" in p.stdout + p.stderr
    assert time.monotonic() - t0 < 20   # two CLI runs, each a Python start-up


@pytest.mark.slow
def test_a_bare_model_id_is_asked_of_the_hub_in_the_request_thread(daemon_online):
    """`gpt-4` (no org) used to skip this check: the backend asked the hub on the device worker
    (issue 16, finding 5) and a raw OSError came back INTERNAL. Now it is NOT_FOUND at once."""
    import grpc
    from tuner.v1 import tuner_pb2 as pb
    stub = daemon_online.stub()
    for call in (lambda: stub.LoadModel(pb.LoadModelRequest(model="gpt-4"), timeout=30),
                 lambda: list(stub.Chat(pb.ChatRequest(model="gpt-4", messages=[pb.ChatMessage(role="user",
                                                                                              content="hi")]),
                                        timeout=30))):
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
        assert "no model repository gpt-4 on the hub" in e.value.details()
        assert time.monotonic() - t0 < 5 * SLACK


def test_the_cli_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    import io

    from rich.console import Console
    from tuner.v1 import tuner_pb2 as pb

    from tunerctl.progress import DownloadView, JobView
    steps = [pb.DownloadProgress(model=REPO, file="model.safetensors", files_done=1, files_total=2,
                                 file_bytes_done=n, file_bytes_total=2_000_000, bytes_done=1000 + n,
                                 bytes_total=2_001_000, bytes_per_second=1e6, eta_seconds=2.0 - n / 1e6)
             for n in (0, 1_000_000)]
    end = pb.DownloadProgress(model=REPO, files_done=2, files_total=2, bytes_done=2_001_000, bytes_total=2_001_000,
                              bytes_per_second=1e6, elapsed_seconds=2.0, done=True)
    out = io.StringIO()
    view = DownloadView(Console(file=out, force_terminal=True, width=120))
    for d in steps + [end]:
        view.update(d)
    assert "download" in out.getvalue() and "model.safetensors (2/2)" in out.getvalue()
    assert f"downloaded {REPO}: 2 files, 2.0 MB in 2.0s (1.0 MB/s)" in out.getvalue()

    out = io.StringIO()
    job = JobView(Console(file=out, force_terminal=False, width=200))
    for d in steps + [end]:
        job.update(pb.JobEvent(sequence=1, download=d))
    job.update(pb.JobEvent(sequence=2, log=pb.LogMessage(level="info", message="next")))
    assert out.getvalue().splitlines() == [
        f"downloading {REPO}: model.safetensors (2/2), 2.0 MB; 1.0 kB of 2.0 MB so far",
        f"downloaded {REPO}: 2 files, 2.0 MB in 2.0s (1.0 MB/s)", "next"]
