"""The real daemon process over a real Unix socket, driven by the real CLI (DESIGN.md §8)."""
from __future__ import annotations

import signal
import stat
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tuner.v1 import tuner_pb2 as pb

from tunerd.backends.base import ModelSpec
from tunerd.backends.generation import Sampling
from tunerd.backends.registry import get_backend

from daemon_utils import DaemonProcess, cli, job_state, json_lines, short_home, wait_for, write_config

pytestmark = pytest.mark.slow


def test_health_and_reflection(daemon):
    assert daemon.healthy()
    with daemon.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"tuner.v1.Tuner", "grpc.health.v1.Health"} <= names


def test_home_and_socket_permissions(daemon):
    assert stat.S_IMODE(daemon.home.stat().st_mode) == 0o700
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(daemon.socket.stat().st_mode)


def test_info_lists_backends(daemon):
    info = daemon.stub().GetInfo(pb.GetInfoRequest())
    assert info.api_version == "tuner.v1"
    assert {b.name for b in info.backends} == {"mlx", "torch"}


def test_unknown_job_is_not_found(daemon):
    with pytest.raises(grpc.RpcError) as e:
        daemon.stub().GetJob(pb.GetJobRequest(job_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_config_is_invalid_argument_with_suggestion(daemon, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", demo_bundle, learning_rat=0.1)
    p = cli(daemon.home, "train", str(cfg), "--json")
    assert p.returncode == 1
    err = json_lines(p.stdout)[-1]["error"]
    assert err["code"] == "INVALID_ARGUMENT"
    assert "did you mean learning_rate" in err["message"]


def test_a_job_that_cannot_fit_is_refused_at_submit_with_what_would(daemon, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "huge.yaml", demo_bundle, per_device_train_batch_size=200000, max_seq_length=512)
    p = cli(daemon.home, "train", str(cfg), "--json")
    assert p.returncode == 1
    err = json_lines(p.stdout)[-1]["error"]
    assert err["code"] == "RESOURCE_EXHAUSTED", err
    assert "will not fit" in err["message"] and "per_device_train_batch_size:" in err["message"]


def test_missing_model_is_not_found(daemon, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, model=str(tmp_path / "no-such-model"))
    p = cli(daemon.home, "train", str(cfg), "--json")
    assert p.returncode == 1 and json_lines(p.stdout)[-1]["error"]["code"] == "NOT_FOUND"


def test_train_watch_completes_and_loss_falls(daemon, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "train.yaml", demo_bundle, max_steps=40)
    p = cli(daemon.home, "train", str(cfg), "--json", check=True)
    events = json_lines(p.stdout)
    steps = [e["step"] for e in events if "step" in e]
    evals = [e["eval"] for e in events if "eval" in e]
    finished = [e["finished"] for e in events if "finished" in e]
    assert finished, p.stdout[-2000:]
    assert steps[-1]["step"] == 40
    assert steps[-1]["loss"] < 0.6 * steps[0]["loss"], [s["loss"] for s in steps]
    assert all(s["tokens_per_second"] > 0 for s in steps)
    assert evals and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    # sequence numbers are contiguous from 1
    seqs = [e["sequence"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))

    # replay after the job ended, from the middle: exactly the stored tail, then the stream ends
    job_id = events[0]["job_id"]
    mid = len(seqs) // 2
    replay = json_lines(cli(daemon.home, "jobs", "watch", job_id, "--from", str(mid), "--json", check=True).stdout)
    assert [e["sequence"] for e in replay] == seqs[mid - 1:]
    assert replay == events[mid - 1:]

    # the trained adapter answers through Chat
    q = demo_bundle["rows"][0]["prompt"]
    out = cli(daemon.home, "chat", "--adapter", f"job:{job_id}", "-p", q, "--temperature", "0",
              "--max-tokens", "24", check=True).stdout
    be = get_backend("mlx")   # the same greedy reply in-process, from the job's adapter folder
    be.load(ModelSpec(model=demo_bundle["model"], backend="mlx"))
    be.load_adapter(Path(finished[-1]["adapter_path"]))
    ids = be.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    expected = "".join(c.text for c in be.generate(ids, Sampling(temperature=0.0, max_tokens=24)))
    assert expected.strip() and out.strip() == expected.strip()


def test_cancel_running_and_queued(daemon, demo_bundle, tmp_path):
    stub = daemon.stub()
    long = write_config(tmp_path / "long.yaml", demo_bundle, max_steps=100000, save_steps=5, eval_steps=100000)
    first = json_lines(cli(daemon.home, "train", str(long), "--detach", "--json", check=True).stdout)[0]["id"]
    second = json_lines(cli(daemon.home, "train", str(long), "--detach", "--json", check=True).stdout)[0]["id"]
    wait_for(lambda: job_state(stub, first) == "running", what="first job running")
    wait_for(lambda: stub.GetJob(pb.GetJobRequest(job_id=first)).step >= 2, what="a few steps")
    assert job_state(stub, second) == "queued"
    assert stub.GetJob(pb.GetJobRequest(job_id=second)).queue_position == 1

    cli(daemon.home, "jobs", "cancel", second, check=True)
    assert job_state(stub, second) == "cancelled"
    cli(daemon.home, "jobs", "cancel", first, check=True)
    wait_for(lambda: job_state(stub, first) == "cancelled", what="first job cancelled")
    events = json_lines(cli(daemon.home, "jobs", "watch", first, "--json").stdout)
    cancelled = [e["cancelled"] for e in events if "cancelled" in e]
    assert cancelled and cancelled[0].get("checkpoint"), "cancelling checkpoints the job"
    # a failed watch exit code for a cancelled job
    assert cli(daemon.home, "jobs", "watch", first, "--json").returncode == 1


def test_the_directory_it_was_started_from_can_go_away(demo_bundle, tmp_path):
    """A daemon outlives the shell it was started from: with that directory deleted, it still
    reads data (datasets asks for the working directory) and trains."""
    started_in = tmp_path / "project"
    started_in.mkdir()
    d = DaemonProcess(short_home(), cwd=started_in).start()
    try:
        started_in.rmdir()
        cfg = write_config(tmp_path / "c.yaml", demo_bundle, max_steps=2, eval_steps=1000)
        p = cli(d.home, "train", str(cfg), "--json")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert [e for e in json_lines(p.stdout) if "finished" in e]
    finally:
        d.stop()


def test_sigterm_checkpoints_and_marks_interrupted(demo_bundle, tmp_path):
    home = short_home()
    d = DaemonProcess(home).start()
    stub = d.stub()
    cfg = write_config(tmp_path / "t.yaml", demo_bundle, max_steps=100000, save_steps=100000, eval_steps=100000)
    job_id = json_lines(cli(home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
    wait_for(lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id)).step >= 2, what="a few steps")
    d.signal(signal.SIGTERM)
    assert d.wait(60) == 0
    assert not d.socket.exists()
    d = DaemonProcess(home).start()
    try:
        assert job_state(d.stub(), job_id) == "interrupted"
        assert list((home / "runs" / job_id).glob("checkpoint-*")), "SIGTERM saved a checkpoint"
    finally:
        d.stop()


def test_tcp_requires_token(tmp_path):
    import socket as s
    with s.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = short_home()
    d = DaemonProcess(home, "--listen", f"127.0.0.1:{port}").start()
    try:
        token = (home / "token").read_text().strip()
        assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
        from tuner.v1 import tuner_pb2_grpc
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = tuner_pb2_grpc.TunerStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.GetInfo(pb.GetInfoRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                stub.GetInfo(pb.GetInfoRequest(), metadata=[("authorization", "Bearer wrong")], timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:  # streams too
                list(stub.WatchJob(pb.WatchJobRequest(job_id="x"), timeout=10))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            info = stub.GetInfo(pb.GetInfoRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
            assert info.api_version == "tuner.v1"
        # the CLI over TCP with the token
        p = cli(home, "--listen", f"127.0.0.1:{port}", "--token", token, "info", "--json", check=True)
        assert json_lines(p.stdout)[0]["api_version"] == "tuner.v1"
        p = cli(home, "--listen", f"127.0.0.1:{port}", "--token", "nope", "info", "--json")
        assert p.returncode == 1
    finally:
        d.stop()


def test_demo_learns_the_facts():
    """The README's demo, end to end: base model 0 right, tuned model answers trained questions."""
    home = short_home()
    try:
        p = cli(home, "demo", "--json", timeout=600)  # backend auto, as `make demo` runs it
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        result = json_lines(p.stdout)[-1]
        assert result["base_correct"] == 0
        assert result["tuned_correct"] >= 3, result
    finally:
        cli(home, "daemon", "stop")


def test_data_inspect_through_the_daemon(daemon, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "i.yaml", demo_bundle)
    r = json_lines(cli(daemon.home, "data", "inspect", str(cfg), "--json", check=True).stdout)[0]
    assert (r["format"], r["train_rows"], r["validation_rows"]) == ("prompt_response", 32, 8)
    assert r["response_tokens_total"] > 0 and r["prompt_tokens_total"] > r["response_tokens_total"]
    supervised = "".join(s["text"] for s in r["examples"][0]["segments"] if s["supervised"])
    assert demo_bundle["rows"][0]["completion"] in supervised or supervised.startswith("The ")
    assert "<|im_end|>" in supervised, "the end-of-turn token carries loss"


@pytest.mark.parametrize("content, code, needle", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "x"\n', "INVALID_ARGUMENT", "bad.jsonl:2"),
    ('{"foo": "a", "bar": "b"}\n', "INVALID_ARGUMENT", "foo"),
    ("", "INVALID_ARGUMENT", "bad.jsonl"),
    (None, "NOT_FOUND", "bad.jsonl"),
], ids=["malformed-json", "unknown-columns", "empty-file", "missing-file"])
def test_data_inspect_bad_files(daemon, demo_bundle, tmp_path, content, code, needle):
    f = tmp_path / "bad.jsonl"
    if content is not None:
        f.write_text(content)
    p = cli(daemon.home, "data", "inspect", str(f), "--model", demo_bundle["model"], "--json")
    assert p.returncode == 1
    err = json_lines(p.stdout)[-1]["error"]
    assert err["code"] == code and needle in err["message"], err
    assert daemon.healthy(), "bad input never crashes the daemon"


@pytest.mark.parametrize("backend, overrides", [
    ("mlx", ["peft_adapter=dora"]),
    ("mlx", ["quantization=4bit", "group_size=32"]),
    ("torch", []),
    ("torch", ["quantization=4bit"]),
], ids=["mlx-dora", "mlx-qlora4", "torch-lora", "torch-qlora4"])
def test_each_adapter_kind_learns_through_the_daemon(daemon, demo_bundle, tmp_path, backend, overrides):
    """`tunerctl train --set ...`: eval loss falls by at least 30% in 40 steps on every path."""
    cfg = write_config(tmp_path / "k.yaml", demo_bundle, max_steps=40, eval_steps=10, save_steps=1000)
    sets = [a for o in [f"backend={backend}", *overrides] for a in ("--set", o)]
    p = cli(daemon.home, "train", str(cfg), *sets, "--json")
    events = json_lines(p.stdout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    started = next(e["started"] for e in events if "started" in e)
    assert started["backend"] == backend
    evals = [e["eval"]["eval_loss"] for e in events if "eval" in e]
    assert len(evals) >= 2 and evals[-1] < 0.7 * evals[0], evals


def test_chat_with_a_running_jobs_latest_checkpoint(daemon, demo_bundle, tmp_path):
    """Chat is served between training steps by the same device thread; training goes on."""
    stub = daemon.stub()
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, max_steps=100000, save_steps=5, eval_steps=100000)
    job_id = json_lines(cli(daemon.home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
    try:
        wait_for(lambda: any((daemon.home / "runs" / job_id).glob("checkpoint-*")), what="a checkpoint")
        p = cli(daemon.home, "chat", "--adapter", f"job:{job_id}", "-p", demo_bundle["rows"][0]["prompt"],
                "--max-tokens", "8", "--json", check=True)
        final = json_lines(p.stdout)[-1]
        assert final["finish_reason"] in ("stop", "length") and final["usage"]["completion_tokens"] > 0
        step = stub.GetJob(pb.GetJobRequest(job_id=job_id)).step
        wait_for(lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id)).step > step, what="training goes on")
        assert job_state(stub, job_id) == "running"
    finally:
        cli(daemon.home, "jobs", "cancel", job_id)
        wait_for(lambda: job_state(stub, job_id) == "cancelled", what="cancelled")


def test_torch_adapter_serves_mlx_chat_and_fuses(daemon, demo_bundle, tmp_path):
    """Train on torch; chat with its mlx-layout export on MLX; the fused model loads on both."""
    cfg = write_config(tmp_path / "f.yaml", demo_bundle, backend="torch", max_steps=40, save_steps=1000)
    events = json_lines(cli(daemon.home, "train", str(cfg), "--json", check=True).stdout)
    job_id = events[0]["job_id"]
    q = demo_bundle["rows"][0]["prompt"]
    ask = ("-p", q, "--temperature", "0", "--max-tokens", "16", "--json")

    def reply(*args):
        return "".join(e.get("delta", "") for e in json_lines(cli(daemon.home, "chat", *args, *ask, check=True).stdout))

    on_torch = reply("--adapter", f"job:{job_id}", "--backend", "torch")
    assert reply("--adapter", job_id, "--backend", "torch") == on_torch   # a bare job id works as job:ID does
    cli(daemon.home, "adapters", "export", f"job:{job_id}", str(tmp_path / "mlx"), "--layout", "mlx", check=True)
    assert (tmp_path / "mlx" / "adapters.safetensors").exists()
    cli(daemon.home, "adapters", "export", f"job:{job_id}", str(tmp_path / "peft"), "--layout", "peft", check=True)
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists() and not (tmp_path / "peft" / "mlx").exists()
    # an adapter folder alone: the base comes from its adapter_config.json (issue 23, item 2)
    assert reply("--adapter", str(tmp_path / "peft"), "--backend", "torch") == on_torch
    on_mlx = reply("--model", demo_bundle["model"], "--adapter", str(tmp_path / "mlx"), "--backend", "mlx")
    assert on_torch and on_mlx == on_torch
    cli(daemon.home, "adapters", "fuse", f"job:{job_id}", str(tmp_path / "fused"), check=True)
    assert reply("--model", str(tmp_path / "fused"), "--backend", "mlx") == on_torch
    assert reply("--model", str(tmp_path / "fused"), "--backend", "torch") == on_torch


def test_an_uncached_model_offline_is_a_clear_unavailable(daemon, demo_bundle):
    p = cli(daemon.home, "data", "inspect", demo_bundle["train"], "--model", "no-such-org/no-such-model", "--json")
    err = json_lines(p.stdout)[-1]["error"]
    assert p.returncode == 1 and err["code"] == "UNAVAILABLE" and "no-such-org/no-such-model" in err["message"]
