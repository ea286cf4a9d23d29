"""One rank of a distributed job: `python -m tunerd.distributed.rank RUN_DIR`, started by the
engine's launcher (torchrun / mlx.launch, see launch.py), never by hand.

It reads the job (TUNER_DIST_SPEC: base64 JSON {config, base_dir, engine, daemon_pid, run_dir}),
joins the engine's process group (sync.engine) and runs the one Trainer (training/loop.py) as
rank r of W, its backend wrapped so that the engine sums the gradients (sync.Synced). What it
leaves in RUN_DIR, for the daemon's side (launch.py):

    events.jsonl      rank 0's events, one JSON record a line ({"kind", "payload"}); a cancel ends
                      with {"kind": "_Cancelled", ...}
    rank-R.pid        written at start; rank-R.done at a clean end
    rank-R.error      JSON {rank, error, secondary, traceback} when the rank fails (`secondary`:
                      it failed because another rank or the launcher went away)
and its output in <output_dir>/ranks/rank-R.log.

Stopping: every step the ranks agree (Engine.any) whether one of them must stop: RUN_DIR/stop
exists (cancel, daemon shutdown) or the daemon's process is gone. Then rank 0 checkpoints and
every rank ends as TrainingCancelled does. A rank whose daemon is gone exits within a minute.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ..files import process_exists

SPEC_ENV = "TUNER_DIST_SPEC"
DAEMON_GONE_GRACE_S = 60.0


def _env_rank() -> int:
    for k in ("RANK", "MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    return 0


def _daemon_alive(pid: int) -> bool:
    return pid <= 0 or process_exists(pid)   # no pid given: nothing to watch


class Rank:
    def __init__(self, spec: dict):
        self.spec = spec
        self.run_dir = Path(spec["run_dir"])
        self.run_dir.mkdir(parents=True, exist_ok=True)   # a remote host: its own copy of the folder
        self.rank = _env_rank()
        self.daemon_pid = int(spec.get("daemon_pid") or 0)
        self.gone_since = 0.0
        self._events = None

    def redirect_output(self) -> None:
        """This rank's stdout and stderr go to <output_dir>/ranks/rank-R.log."""
        logs = Path(self.spec["config"]["output_dir"]) / "ranks"
        logs.mkdir(parents=True, exist_ok=True)
        fd = os.open(logs / f"rank-{self.rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {self.rank} %(levelname)s %(name)s: "
                                                       "%(message)s", force=True)

    def mark(self, what: str, text: str = "") -> None:
        (self.run_dir / f"rank-{self.rank}.{what}").write_text(text)

    def emit(self, event) -> None:
        from ..training.events import to_record

        if self.rank == 0:
            kind, payload = to_record(event)
            self._write({"kind": kind, "payload": payload})

    def _write(self, record: dict) -> None:
        if self._events is None:
            self._events = open(self.run_dir / "events.jsonl", "a", encoding="utf-8")
        self._events.write(json.dumps(record, default=str) + "\n")
        self._events.flush()

    def watch_daemon(self) -> None:
        """A thread: the daemon gone, the ranks stop at the next step; gone a minute, this one exits."""
        while True:
            time.sleep(0.5)
            if not _daemon_alive(self.daemon_pid):
                self.gone_since = self.gone_since or time.monotonic()
                if time.monotonic() - self.gone_since > DAEMON_GONE_GRACE_S:
                    os._exit(3)

    def local_stop(self) -> bool:
        return self.gone_since > 0 or (self.run_dir / "stop").exists()

    def run(self) -> int:
        from ..config.loader import from_record
        from ..training.loop import TrainingCancelled, train
        from .sync import PeerLost, Synced, engine

        self.redirect_output()
        self.mark("pid", str(os.getpid()))
        logging.getLogger(__name__).info("rank %d: pid %d, daemon pid %d", self.rank, os.getpid(), self.daemon_pid)
        signal.signal(signal.SIGTERM, self._terminated)
        threading.Thread(target=self.watch_daemon, name="daemon-watch", daemon=True).start()
        eng = None
        try:
            cfg = from_record(self.spec["config"])
            eng = engine(self.spec["engine"])
            self.rank = eng.rank
            backend = Synced(self._backend(cfg), eng)
            train(cfg, backend, self.emit, lambda: eng.any(self.local_stop()), self.spec.get("base_dir") or None,
                  rank=eng.rank, world_size=eng.world_size, validated=True, all_sum=eng.all_sum)
        except TrainingCancelled as e:
            if self.rank == 0:
                self._write({"kind": "_Cancelled", "payload": {"step": e.step, "checkpoint": e.checkpoint}})
            self.mark("done", "cancelled")
            return 0
        except BaseException as e:   # noqa: BLE001 - recorded for the daemon, then the rank fails
            secondary = isinstance(e, PeerLost)
            logging.getLogger(__name__).exception("rank %d failed", self.rank)
            self.mark("error", json.dumps({"rank": self.rank, "error": _describe(e), "secondary": secondary,
                                           "traceback": traceback.format_exc()[-4000:]}))
            return 1
        finally:
            if eng is not None:
                try:
                    eng.close()
                except Exception:   # noqa: BLE001
                    pass
        self.mark("done", "finished")
        return 0

    def _backend(self, cfg):
        from ..backends.registry import get_backend

        return get_backend(self.spec["backend"])

    def _terminated(self, signum, frame) -> None:
        """The launcher stops this rank (another one failed): say so, and go."""
        self.mark("error", json.dumps({"rank": self.rank, "error": "stopped by the launcher (another rank ended)",
                                       "secondary": True, "traceback": ""}))
        os._exit(128 + signum)


def _describe(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    return msg if isinstance(e, (ValueError, RuntimeError, FileNotFoundError)) else f"{type(e).__name__}: {msg}"


def encode_spec(spec: dict) -> str:
    return base64.b64encode(json.dumps(spec).encode()).decode()


def main() -> int:
    spec = json.loads(base64.b64decode(os.environ[SPEC_ENV]))
    return Rank(spec).run()


if __name__ == "__main__":
    sys.exit(main())
