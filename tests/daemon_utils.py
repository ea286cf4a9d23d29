"""Run the real daemon and the real CLI as subprocesses (shared by the end-to-end tests)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tuner.v1 import tuner_pb2 as pb
from tuner.v1 import tuner_pb2_grpc

# Bounds on "at once" / "fast" in seconds are multiplied by this: CI and the helpers' machines are
# shared 2-core boxes, where a process can wait a second or more for a core (issue 23, item 11).
# What the tests tell apart stays apart: a blocked call waits for a whole training step or reply.
SLACK = float(os.environ.get("MACTUNER_TIME_SLACK", "2.5"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_home() -> Path:
    """A short $TUNER_HOME (Unix socket paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="tn-"))


class DaemonProcess:
    def __init__(self, home: Path, *extra: str, cwd=None):
        self.home = Path(home)
        self.extra = list(extra)
        self.cwd = cwd   # the directory it is started from (default: the test's)
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.home / "tunerd.sock"

    def start(self, timeout: float = 60) -> "DaemonProcess":
        env = dict(os.environ, TUNER_HOME=str(self.home))
        self.proc = subprocess.Popen([sys.executable, "-m", "tunerd", "--home", str(self.home), *self.extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=self.cwd)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunerd exited: {self.proc.stdout.read().decode()[-3000:]}")
            if self.socket.exists() and self.healthy():
                return self
            time.sleep(0.1)
        raise TimeoutError("tunerd did not become healthy")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.socket}")

    def stub(self) -> tuner_pb2_grpc.TunerStub:
        return tuner_pb2_grpc.TunerStub(self.channel())

    def healthy(self) -> bool:
        try:
            with self.channel() as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cli(home: Path, *args: str, timeout: float = 300, check: bool = False, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TUNER_HOME=str(home), COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "tunerctl", "--home", str(home), *args], capture_output=True,
                       text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"tunerctl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def wait_for(pred, timeout: float = 120, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def job_state(stub, job_id: str) -> str:
    from tuner.v1.tuner_pb2 import JobState
    return JobState.Name(stub.GetJob(pb.GetJobRequest(job_id=job_id)).state).lower()


def write_config(path: Path, bundle: dict, **overrides) -> Path:
    """A small, fast training config for the tiny demo model."""
    cfg = {"model": bundle["model"], "backend": "mlx", "peft_adapter": "lora", "lora_r": 8,
           "lora_alpha": 16, "lora_target_modules": "all-linear", "learning_rate": 0.003,
           "lr_scheduler_type": "constant", "max_steps": 40, "per_device_train_batch_size": 8,
           "max_seq_length": 128, "logging_steps": 5, "eval_steps": 20, "save_steps": 10, "seed": 0,
           "data": {"train": bundle["train"], "validation": bundle["valid"]}}
    for k, v in overrides.items():
        if k == "data":
            cfg["data"].update(v)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


# -- the chat REPL in a pseudo-terminal -----------------------------------------------------------
LEFT, UP = "\x1b[D", "\x1b[A"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"   # what a terminal sends around a paste


def spawn_repl(home: Path, cwd: Path, *chat_args: str):
    """`tunerctl chat ARGS` (the REPL) in a pseudo-terminal, at its first prompt. Output is decoded
    strictly as UTF-8: a byte sequence that is not whole characters fails the test that reads it."""
    import pexpect

    env = dict(os.environ, TUNER_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", COLUMNS="120")
    child = pexpect.spawn(sys.executable, ["-m", "tunerctl", "--home", str(home), "chat", *chat_args],
                          env=env, cwd=str(cwd), encoding="utf-8", codec_errors="strict", timeout=60,
                          dimensions=(40, 120))
    child.expect_exact(">>>")
    return child


def repl_answer(child) -> tuple[int, str]:
    """Wait for the end of an answer (its tokens/s line) and the next prompt: (the tokens it
    counted, what the terminal showed from the previous prompt to that line)."""
    child.expect(r"(\d+) tokens, [\d.]+ tok/s")
    n, shown = int(child.match.group(1)), child.before
    child.expect_exact(">>>")
    return n, shown
