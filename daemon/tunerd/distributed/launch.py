"""The daemon's side of a distributed job: start the process group with the engine's own launcher,
relay rank 0's events into the job, stop it, and say which rank failed.

    engine_name(dist, backend)          ddp | mlx: `distributed.backend`, auto by the job's backend
    command(engine, dist, world, port)  `python -m torch.distributed.run ...` / `mlx.launch ...`
    run_group(cfg, backend, emit, should_stop, base_dir, serve_interactive) -> Finished

The ranks (rank.py) and this side share a run folder (a short temporary one) and the job's
output_dir: rank 0 appends its events to RUN/events.jsonl, which this side tails and emits as the
job's (one progress bar, one set of events); a cancel or the daemon's shutdown (`should_stop()`)
writes RUN/stop, which the ranks agree on at their next step (rank 0 checkpoints) and end as
TrainingCancelled; any rank failing ends the group (the launcher stops the others) and the job
fails with `RankFailed`: the rank that failed first, its error and its log's tail
(<output_dir>/ranks/rank-R.log). The group runs in its own session; it is stopped (SIGTERM, then
SIGKILL) when this side ends for any reason, and each rank watches the daemon's pid.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from ..config.loader import to_dict
from ..config.schema import TrainConfig
from ..training import events as ev
from ..training.loop import TrainingCancelled
from .rank import SPEC_ENV, encode_spec

log = logging.getLogger(__name__)

ENGINES = {"torch": "ddp", "mlx": "mlx"}
LOG_TAIL_LINES = 15
STOP_GRACE_S = 60.0   # after a stop request, how long the group has to checkpoint before it is killed


class RankFailed(RuntimeError):
    """A rank of a distributed job failed; the message names it and ends with its log's tail."""


def engine_name(dist, backend: str) -> str:
    """The engine for the job's backend: ddp (torch) or mlx; `auto` picks by the backend."""
    if dist.backend == "auto":
        return ENGINES[backend]
    if dist.backend == "fsdp":
        raise ValueError("distributed.backend: fsdp is not built yet; use ddp (config/rules.py says why)")
    if ENGINES[backend] != dist.backend:
        raise ValueError(f"distributed.backend: {dist.backend} does not run the {backend} backend; "
                         f"use {ENGINES[backend]} or auto")
    return dist.backend


def world_size(dist) -> int:
    if dist.hostfile:
        hosts = json.loads(Path(dist.hostfile).expanduser().read_text())
        return max(1, dist.nproc_per_node) * max(1, len(hosts))
    return dist.world_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of `n` consecutive free loopback ports (the ring backend listens on port + i)."""
    for _ in range(50):
        first = free_port()
        try:
            socks = []
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", first + i))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports for the ring backend")


def _mlx_launch() -> list[str]:
    script = Path(sys.executable).parent / "mlx.launch"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]


def command(engine: str, dist, world: int, port: int, spec_env: str) -> list[str]:
    """The launcher's command line for `world` ranks of `python -m tunerd.distributed.rank`."""
    rank = ["-m", "tunerd.distributed.rank"]
    if engine == "ddp":
        if dist.hosts or dist.hostfile:
            raise ValueError("distributed.hosts: the daemon starts torch ranks on this machine only "
                             "(nproc_per_node: one per GPU); for several machines start torchrun on each")
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc-per-node", str(dist.nproc_per_node), "--master-addr", dist.master_addr,
                "--master-port", str(port), "--max-restarts", "0", *rank]
    hosts = (["--hostfile", str(Path(dist.hostfile).expanduser())] if dist.hostfile
             else ["--hosts", ",".join(dist.hosts or ["127.0.0.1"])])
    remote = ["--env", f"{SPEC_ENV}={spec_env}", "--python", sys.executable] if (dist.hosts or dist.hostfile) else []
    return [*_mlx_launch(), *hosts, "-n", str(dist.nproc_per_node), "--starting-port", str(port), *remote,
            "--", sys.executable, *rank]


def run_group(cfg: TrainConfig, backend: str, emit: Callable, should_stop: Callable[[], bool],
              base_dir: Optional[str] = None, serve_interactive: Callable[[], None] = lambda: None) -> ev.Finished:
    """Train `cfg` as a process group (see the module docstring); returns rank 0's Finished, raises
    TrainingCancelled after a stop, RankFailed when a rank failed."""
    dist = cfg.distributed
    engine = engine_name(dist, backend)
    world = world_size(dist)
    port = dist.master_port or (free_ports(world) if engine == "mlx" else free_port())
    run_dir = Path(tempfile.mkdtemp(prefix="tuner-dist-"))
    cfg = dataclasses.replace(cfg, distributed=dataclasses.replace(dist, backend=engine))   # auto resolved
    spec = encode_spec({"config": to_dict(cfg), "base_dir": base_dir or "", "engine": engine, "backend": backend,
                        "daemon_pid": os.getpid(), "run_dir": str(run_dir)})
    cmd = command(engine, dist, world, port, spec)
    env = dict(os.environ, **{SPEC_ENV: spec, "PYTHONUNBUFFERED": "1",
                              "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(),
                                                                          os.environ.get("PYTHONPATH")]))})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, dist.nproc_per_node))))
    out = Path(cfg.output_dir)
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    launcher_log = out / "ranks" / "launcher.log"
    emit(ev.Log("info", f"distributed: {world} ranks ({engine}) started with: {' '.join(cmd[1:6])} ..."))
    with open(launcher_log, "ab") as lf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=base_dir or None)
    tail = _Tail(run_dir / "events.jsonl")
    finished = cancelled = None
    stop_at = 0.0
    try:
        while True:
            for kind, payload in tail.read():
                if kind == "_Cancelled":
                    cancelled = payload
                    continue
                event = ev.from_record(kind, payload)
                finished = event if isinstance(event, ev.Finished) else finished
                emit(event)
            if proc.poll() is not None:
                if tail.pending():
                    continue
                break
            serve_interactive()
            if not stop_at and should_stop():
                (run_dir / "stop").touch()
                stop_at = time.monotonic()
            if stop_at and time.monotonic() - stop_at > STOP_GRACE_S:
                log.warning("distributed job did not stop within %.0f s; killing its ranks", STOP_GRACE_S)
                _stop(proc)
            time.sleep(0.05)
        if cancelled is not None:
            raise TrainingCancelled(int(cancelled["step"]), str(cancelled.get("checkpoint") or ""))
        if finished is not None and proc.returncode == 0:
            return finished
        raise RankFailed(blame(run_dir, world, out / "ranks", launcher_log, proc.returncode))
    finally:
        _stop(proc)
        shutil.rmtree(run_dir, ignore_errors=True)


def _package_root() -> str:
    import tunerd

    return str(Path(tunerd.__file__).resolve().parent.parent)


def _stop(proc: subprocess.Popen) -> None:
    """The whole group (its own session): SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Tail:
    """Complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path):
        self.path, self.offset, self._more = path, 0, False

    def read(self) -> list[tuple[str, dict]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        self._more = len(data) == 1 << 20
        out = []
        for line in data[:end].splitlines():
            rec = json.loads(line)
            out.append((rec["kind"], rec["payload"]))
        return out

    def pending(self) -> bool:
        return self._more


def blame(run_dir: Path, world: int, logs: Path, launcher_log: Path, returncode: Optional[int]) -> str:
    """Which rank failed first and why, with its log's tail: a rank's own error first, then a rank
    that died without one (a signal: SIGKILL, the OOM killer), then one that lost its peers."""
    errors, silent = {}, []
    for r in range(world):
        err = run_dir / f"rank-{r}.error"
        if err.exists():
            errors[r] = json.loads(err.read_text())
        elif (run_dir / f"rank-{r}.pid").exists() and not (run_dir / f"rank-{r}.done").exists():
            silent.append(r)
    launcher = _tail(launcher_log)
    primary = sorted((r for r, e in errors.items() if not e.get("secondary")),
                     key=lambda r: (run_dir / f"rank-{r}.error").stat().st_mtime)
    if primary:
        r = primary[0]
        return f"rank {r} of {world} failed: {errors[r]['error']}" + _log_tail(logs, r)
    if silent:
        r = silent[0]
        pid = (run_dir / f"rank-{r}.pid").read_text().strip()
        code = re.search(rf"rank\s*:\s*{r}\s.*?exitcode\s*:\s*(-?\d+)", launcher, re.S)
        how = _signal_name(int(code.group(1))) if code else "killed by a signal (SIGKILL, the OOM killer?)"
        return f"rank {r} of {world} (pid {pid}) died without an error: {how}" + _log_tail(logs, r)
    if errors:
        r = min(errors)
        return f"rank {r} of {world} failed: {errors[r]['error']}" + _log_tail(logs, r)
    return (f"the {world}-rank process group ended (exit status {returncode}) before any rank reported; "
            f"launcher output (last lines):\n{launcher}")


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _log_tail(logs: Path, rank: int) -> str:
    text = _tail(logs / f"rank-{rank}.log")
    return f"\nlog {logs / f'rank-{rank}.log'} (last lines):\n{text}" if text else ""
