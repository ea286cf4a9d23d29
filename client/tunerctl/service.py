"""Run tunerd as a background service: a launchd agent on macOS, a systemd user unit on Linux."""
from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

LABEL = "com.mactuner.tunerd"
UNIT = "tunerd.service"


def daemon_command(home: Path) -> list[str]:
    return [sys.executable, "-m", "tunerd", "--home", str(home)]


def render_plist(home: Path) -> bytes:
    return plistlib.dumps({
        "Label": LABEL,
        "ProgramArguments": daemon_command(home),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},   # restart after a crash, not after `daemon stop`
        "ProcessType": "Background",
        "EnvironmentVariables": {"TUNER_HOME": str(home)},
        "WorkingDirectory": str(home),
        "StandardOutPath": str(home / "tunerd.out"),
        "StandardErrorPath": str(home / "tunerd.err"),
        "ExitTimeOut": 120,                        # time to checkpoint a running job on SIGTERM
    })


def render_unit(home: Path) -> str:
    cmd = " ".join(_quote(a) for a in daemon_command(home))
    return f"""[Unit]
Description=MacTuner fine-tuning daemon (tunerd)
After=network.target

[Service]
Type=simple
ExecStart={cmd}
Environment=TUNER_HOME={home}
WorkingDirectory={home}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=120
StandardOutput=append:{home}/tunerd.out
StandardError=append:{home}/tunerd.out

[Install]
WantedBy=default.target
"""


def _quote(a: str) -> str:
    return f'"{a}"' if any(c in a for c in " \t\"'\\") else a


def platform_kind(explicit: str = "") -> str:
    return explicit or ("launchd" if sys.platform == "darwin" else "systemd")


def service_path(kind: str) -> Path:
    if kind == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    return Path.home() / ".config" / "systemd" / "user" / UNIT


def render(kind: str, home: Path) -> str:
    return render_plist(home).decode() if kind == "launchd" else render_unit(home)


def _run(cmd: list[str]) -> tuple[bool, str]:
    if not shutil.which(cmd[0]):
        return False, f"{cmd[0]} not found"
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def install(kind: str, home: Path) -> list[str]:
    """Write the service file and ask the service manager to start it; returns what happened."""
    path = service_path(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(render(kind, home))
    notes = [f"wrote {path}"]
    if kind == "launchd":
        import os
        ok, out = _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)])
    else:
        ok, out = _run(["systemctl", "--user", "daemon-reload"])
        if ok:
            ok, out = _run(["systemctl", "--user", "enable", "--now", UNIT])
    notes.append("service started" if ok else f"could not start the service: {out}")
    return notes


def uninstall(kind: str) -> list[str]:
    path = service_path(kind)
    if kind == "launchd":
        import os
        _run(["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"])
    else:
        _run(["systemctl", "--user", "disable", "--now", UNIT])
    if path.exists():
        path.unlink()
        return [f"removed {path}"]
    return [f"{path} was not installed"]


def status(kind: str) -> dict:
    path = service_path(kind)
    out = {"kind": kind, "path": str(path), "installed": path.exists(), "manager": ""}
    if kind == "launchd":
        import os
        ok, text = _run(["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"])
    else:
        ok, text = _run(["systemctl", "--user", "is-active", UNIT])
    out["manager"] = text.splitlines()[0] if text else ("" if ok else "unknown")
    return out
