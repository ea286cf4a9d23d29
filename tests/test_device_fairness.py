"""Requests never do slow work on the device thread (issue 16, finding 5; and from finding 8 the
model paths and corrupt adapters in chat), through the real daemon over its Unix socket and the CLI:
a prompt over the size cap is refused at once; a huge prompt under it is tokenised in the request's
thread while a training job keeps stepping; an unknown model id is NOT_FOUND at once, saying what was
tried; a file, a device or a folder without config.json is a clear error naming the path; a damaged
adapter file is named."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import cli, json_lines, wait_for, write_config, SLACK

pytestmark = pytest.mark.slow

MAX_PROMPT_CHARS = 1_000_000   # tunerd.chat.MAX_PROMPT_CHARS


def chat(stub, model: str = "", content: str = "hi", adapter: str = "", max_tokens: int = 4, timeout: float = 120):
    req = pb.ChatRequest(model=model, adapter=adapter, messages=[pb.ChatMessage(role="user", content=content)],
                         sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return list(stub.Chat(req, timeout=timeout))


def refused(call) -> tuple[grpc.StatusCode, str, float]:
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details(), time.perf_counter() - t0


# -- finding 8: corrupt adapters in chat ------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(daemon, demo_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapter")
    cfg = write_config(tmp / "short.yaml", demo_bundle, max_steps=2, eval_steps=100000, save_steps=100000,
                       output_dir=str(tmp / "out"))
    events = json_lines(cli(daemon.home, "train", str(cfg), "--json", check=True).stdout)
    assert [e for e in events if "finished" in e or "succeeded" in e or "step" in e]
    path = next(p.parent for p in (tmp / "out").rglob("adapter_model.safetensors"))
    return path


def damaged_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def test_a_damaged_adapter_is_named(daemon, demo_bundle, adapter, tmp_path):
    stub = daemon.stub()
    assert chat(stub, demo_bundle["model"], adapter=str(adapter))   # the intact one works

    def truncate(d):
        f = d / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def garble(d):
        (d / "adapter_config.json").write_text("{ not json")

    def truncate_mlx(d):
        f = d / "mlx" / "adapters.safetensors"
        f.write_bytes(f.read_bytes()[:5])

    cases = [(truncate, "adapter_model.safetensors"), (garble, "adapter_config.json")]
    if (adapter / "mlx" / "adapters.safetensors").exists():
        cases.append((truncate_mlx, "adapters.safetensors"))
    for i, (damage, name) in enumerate(cases):
        bad = damaged_copy(adapter, tmp_path / f"bad{i}", damage)
        code, details, _ = refused(lambda: chat(stub, demo_bundle["model"], adapter=str(bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert name in details and str(bad) in details and "damaged" in details, details
        code, details, _ = refused(lambda: stub.LoadModel(pb.LoadModelRequest(model=demo_bundle["model"],
                                                                               adapter=str(bad)), timeout=60))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and name in details, details
    # the CLI shows it too
    p = cli(daemon.home, "chat", "--model", demo_bundle["model"], "--adapter", str(tmp_path / "bad0"), "-p", "hi",
            "--json")
    assert p.returncode == 1 and "damaged" in json_lines(p.stdout)[-1]["error"]["message"]


class StepWatch:
    """Polls the job's step; the longest time between two steps while watched."""

    def __init__(self, stub, job_id: str):
        self.stub, self.job_id = stub, job_id
        self.changes: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = None
        while not self._stop.is_set():
            step = self.stub.GetJob(pb.GetJobRequest(job_id=self.job_id)).step
            if step != last:
                self.changes.append(time.perf_counter())
                last = step
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self.changes.append(time.perf_counter())   # the time since the last step counts too
        self._stop.set()
        self._t.join(5)

    @property
    def max_gap(self) -> float:
        return max(b - a for a, b in zip(self.changes, self.changes[1:]))


@pytest.fixture(scope="module")
def job(daemon, demo_bundle, tmp_path_factory):
    """A long training job on the demo model (cancelled at the end of the module)."""
    tmp = tmp_path_factory.mktemp("fair")
    cfg = write_config(tmp / "long.yaml", demo_bundle, max_steps=100000, save_steps=100000, eval_steps=100000,
                       logging_steps=1)
    job_id = json_lines(cli(daemon.home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
    wait_for(lambda: daemon.stub().GetJob(pb.GetJobRequest(job_id=job_id)).step >= 2, what="the job training")
    chat(daemon.stub(), demo_bundle["model"], max_tokens=1)   # the chat's model resident once
    yield job_id
    cli(daemon.home, "jobs", "cancel", job_id)


# -- finding 5: a size cap, and tokenising off the device thread -----------------------------------
def test_a_prompt_over_the_character_cap_is_refused_at_once(daemon, demo_bundle, job):
    stub = daemon.stub()
    for call in (lambda: chat(stub, demo_bundle["model"], "x" * (MAX_PROMPT_CHARS + 1)),
                 lambda: list(stub.Generate(pb.GenerateRequest(model=demo_bundle["model"],
                                                               prompt="x" * (MAX_PROMPT_CHARS + 1)), timeout=60))):
        code, details, took = refused(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "1,000,001 characters" in details and "limit is 1,000,000" in details, details
        assert took < 2.0 * SLACK, took
    # the sum over the messages counts
    req = pb.ChatRequest(model=demo_bundle["model"], messages=[pb.ChatMessage(role="user", content="y" * 600_000),
                                                                pb.ChatMessage(role="user", content="z" * 600_000)])
    code, details, _ = refused(lambda: list(stub.Chat(req, timeout=60)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1,200,000 characters" in details, details


@pytest.mark.parametrize("size", [3_000_000, 900_000])
def test_a_huge_prompt_does_not_stall_training(daemon, demo_bundle, job, size):
    """3 MB (under gRPC's 4 MB): refused before tokenising. 900 k characters (under the cap):
    tokenised in the request's thread and refused for the model's context; either way the job's
    steps keep coming (before: a 3.9 MB prompt stopped them for 17.7 s)."""
    stub = daemon.stub()
    with StepWatch(stub, job) as w:
        time.sleep(1.0)
        code, details, took = refused(lambda: chat(stub, demo_bundle["model"], "word " * (size // 5)))
        time.sleep(0.5)
    print(f"{size:,}-character prompt: {code.name} after {took:.2f}s; longest step gap {w.max_gap:.2f}s "
          f"({len(w.changes)} steps)")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert ("limit is 1,000,000" if size > MAX_PROMPT_CHARS else "the model's context is") in details, details
    assert w.max_gap < 2.0, w.changes


# -- finding 5: unknown model ids fail at once (offline: UNAVAILABLE, the one offline rule, hub.py) --
@pytest.mark.parametrize("model", ["gpt2", "gpt-4", "no-such-org/no-such-model"])
def test_an_unknown_model_id_fails_at_once(daemon, job, model):
    stub = daemon.stub()
    with StepWatch(stub, job) as w:
        code, details, took = refused(lambda: chat(stub, model))
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "no local folder" in details and "not in the Hugging Face cache" in details and "offline" in details
    assert took < SLACK and w.max_gap < 2.0, (took, w.changes)
    code, details, _ = refused(lambda: stub.LoadModel(pb.LoadModelRequest(model=model), timeout=60))
    assert code == grpc.StatusCode.UNAVAILABLE, details


@pytest.mark.parametrize("model", ["gpt2", "gpt-4"])
def test_tunerctl_chat_with_an_unknown_model_is_unavailable_offline(daemon, model):
    t0 = time.perf_counter()
    p = cli(daemon.home, "chat", "--model", model, "-p", "hi", "--json")
    took = time.perf_counter() - t0
    err = json_lines(p.stdout)[-1]["error"]
    assert p.returncode == 1 and err["code"] == "UNAVAILABLE", p.stdout + p.stderr
    assert model in err["message"] and "Hugging Face cache" in err["message"]
    assert took < 5.0 * SLACK, took   # the CLI's own start-up included; the daemon answers in milliseconds


# -- finding 8: a model that is a file, a device or a folder without config.json ------------------
@pytest.mark.parametrize("model, kind", [("/etc/passwd", "is a file"), ("/dev/zero", "not a regular file"),
                                         ("~", "without config.json"), ("/no/such/folder", "no local folder")])
def test_a_model_path_that_is_no_model_folder_is_a_clear_error(daemon, model, kind):
    stub = daemon.stub()
    calls = {"Chat": lambda: chat(stub, model, timeout=30),
             "Generate": lambda: list(stub.Generate(pb.GenerateRequest(model=model, prompt="hi"), timeout=30)),
             "LoadModel": lambda: stub.LoadModel(pb.LoadModelRequest(model=model), timeout=30)}
    for name, call in calls.items():
        code, details, took = refused(call)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (name, code, details)
        assert model in details and kind in details and "config.json" in details, (name, details)
        assert took < 2.0 * SLACK, (name, took)


def test_resolve_model_id_refuses_them_too(tmp_path):
    """The HTTP layer's model ids go through Core.resolve_model_id."""
    from tunerd.core import Core

    core = SimpleNamespace(registry=SimpleNamespace(snapshot=lambda: ()))
    for model, kind in [("/etc/passwd", "is a file"), ("/dev/zero", "not a regular file"),
                        ("~", "without config.json"), (str(tmp_path), "without config.json")]:
        with pytest.raises(ValueError, match=kind):
            Core.resolve_model_id(core, model)
    with pytest.raises(ConnectionError, match="Hugging Face cache"):
        Core.resolve_model_id(core, "gpt-4")
