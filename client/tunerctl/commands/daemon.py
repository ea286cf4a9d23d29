"""`tunerctl daemon start|stop|status|logs`, `tunerctl service ...`, `tunerctl info` and `--version`."""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

from tuner import Client, DaemonUnavailable
from tuner.connection import Target, describe_holder, is_healthy, lock_holder, open_channel, start_daemon

from .. import service as svc
from ..ui import as_dict, console, err, print_json, table
from .common import EXIT_FAILED, EXIT_USAGE, client, human_bytes, target


def cmd_daemon(args) -> int:
    t = target(args)
    if args.action == "start":
        ch = open_channel(t)
        if is_healthy(ch):
            if args.http:   # asked for what the running daemon may not serve: say so, and fail (issue 23, item 10)
                print_json({"running": True, "started": False, "address": t.address(),
                            "error": {"code": "FAILED_PRECONDITION", "message": "already running; --http not applied"}}) \
                    if args.json else err.print(f"tunerd is already running on {t.address()}, so --http {args.http} "
                                                "was not applied; stop it first (tunerctl daemon stop)")
                return EXIT_FAILED
            print_json({"running": True, "started": False, "address": t.address()}) if args.json else console.print(
                f"tunerd is already running on {t.address()}")
            return 0
        extra = ((["--http", args.http] if args.http else []) + (["--http-host", args.http_host] if args.http_host else [])
                 + (["--http-no-auth"] if args.http_no_auth else []))
        pid = start_daemon(t, extra=extra)
        print_json({"running": True, "started": True, "pid": pid, "address": t.address()}) if args.json \
            else console.print(f"tunerd started (pid {pid}) on {t.address()}"
                               + (f"; OpenAI-compatible HTTP on http://{args.http}" if args.http else ""))
        return 0
    if args.action == "stop":
        return _stop_daemon(t, args)
    if args.action == "status":
        ch = open_channel(t)
        if not is_healthy(ch):
            holder = lock_holder(t.home) if t.is_local else None
            if holder:
                print_json({"running": True, "answering": False, "pid": holder.get("pid"),
                            "address": f"unix://{holder.get('socket')}"}) if args.json else err.print(
                    describe_holder(t.home, holder))
                return EXIT_FAILED
            print_json({"running": False, "address": t.address()}) if args.json else console.print(
                f"tunerd is not running ({t.address()})")
            return 3
        return _print_info(Client(ch, t).info(), args)
    if args.action == "logs":
        log = t.home / "tunerd.log"
        if not log.exists():
            raise FileNotFoundError(f"no log yet at {log}")
        for line in log_lines(log, args.n, args.follow):
            print_json(log_record(line)) if args.json else print(line, flush=True)
        return 0
    return EXIT_USAGE


def _stop_daemon(t: Target, args) -> int:
    holder = lock_holder(t.home)
    if not holder or not holder.get("pid"):
        if not holder:
            print_json({"running": False, "stopped": False}) if args.json else console.print("tunerd is not running")
            return 0
        raise DaemonUnavailable(f"tunerd is starting for {t.home}; try again in a moment")
    pid = int(holder["pid"])  # the process holding the home's lock, never a stale pid file's
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass

    def holds() -> bool:
        return (lock_holder(t.home) or {}).get("pid") == pid

    deadline = time.time() + 120
    while time.time() < deadline and holds():
        time.sleep(0.2)
    if holds():
        raise DaemonUnavailable(f"tunerd (pid {pid}) did not stop within 120 s")
    print_json({"running": False, "stopped": True, "pid": pid}) if args.json else console.print("tunerd stopped")
    return 0


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) (\w+) ([^:\s]+): (.*)$")


def log_record(line: str) -> dict:
    """A daemon log line as {"time", "level", "logger", "message"}; a continuation line (a
    traceback's) as {"message"}."""
    m = _LOG_LINE.match(line)
    return dict(zip(("time", "level", "logger", "message"), m.groups())) if m else {"message": line}


def log_lines(path: Path, n: int, follow: bool) -> Iterator[str]:
    """The last `n` lines of a log, then (with `follow`) new ones as they are written, across the
    daemon's log rotation, until interrupted."""
    f = open(path, encoding="utf-8", errors="replace")
    try:
        yield from f.read().splitlines()[-n:] if n > 0 else []
        partial = ""
        while follow:
            chunk = f.read()
            if chunk:
                *done, partial = (partial + chunk).split("\n")
                yield from done
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                f.close()
                f = open(path, encoding="utf-8", errors="replace")
            else:
                time.sleep(0.25)
    finally:
        f.close()


def _print_info(info, args) -> int:
    if args.json:
        print_json(as_dict(info))
        return 0
    console.print(f"tunerd {info.version} ({info.api_version}), pid {info.pid}, up {info.uptime_seconds:.0f}s, "
                  f"home {info.home}")
    console.print(f"memory: {human_bytes(info.memory_available_bytes)} free of {human_bytes(info.memory_total_bytes)}; "
                  f"default backend: {info.default_backend or '?'}")
    table(["backend", "available", "version", "note"],
          [[b.name, "yes" if b.available else "no", b.version, b.reason] for b in info.backends])
    table(["device", "backend", "detail"], [[d.name, d.backend, d.detail] for d in info.devices])
    return 0


def cmd_service(args) -> int:
    kind = svc.platform_kind(args.platform)
    if args.action == "install":
        if args.dry_run:
            text = svc.render(kind, args.home)
            print_json({"kind": kind, "path": str(svc.service_path(kind)), "content": text}) if args.json \
                else sys.stdout.write(text)
            return 0
        r = svc.install(kind, args.home)
        if args.json:
            print_json(r)
        else:
            console.print(f"wrote {r['path']}")
            if r["started"]:
                console.print("service started")
            else:
                err.print(f"[bold red]error[/]: could not start the service: {r['detail']}", highlight=False)
        return 0 if r["started"] else EXIT_FAILED
    if args.action == "uninstall":
        r = svc.uninstall(kind)
        print_json(r) if args.json else console.print(
            f"removed {r['path']}" if r["removed"] else f"{r['path']} was not installed")
        return 0
    st = svc.status(kind)
    print_json(st) if args.json else console.print(
        f"{st['kind']}: {'installed' if st['installed'] else 'not installed'} at {st['path']}"
        + (f" ({st['manager']})" if st["manager"] else ""))
    return 0


def cmd_version(args) -> int:
    """tunerctl's version, and the daemon's when one answers (none is started for this)."""
    from .. import __version__

    t = target(args)
    daemon = None
    with open_channel(t) as ch:
        if is_healthy(ch):
            info = Client(ch, t).info()
            daemon = {"version": info.version, "api_version": info.api_version, "pid": info.pid,
                      "address": t.address()}
    if args.json:
        print_json({"tunerctl": __version__, "tunerd": daemon})
        return 0
    console.print(f"tunerctl {__version__}")
    console.print(f"tunerd {daemon['version']} ({daemon['api_version']}, pid {daemon['pid']}) on {daemon['address']}"
                  if daemon else f"tunerd: not running ({t.address()})")
    return 0


def cmd_info(args) -> int:
    with client(args) as c:
        return _print_info(c.info(), args)
