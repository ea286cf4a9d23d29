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
    cmd = " ".join(_exec_arg(a) for a in daemon_command(home))
    path = _specifiers(str(home))  # WorkingDirectory= and append: take the rest of the line as it is
    return f"""[Unit]
Description=MacTuner fine-tuning daemon (tunerd)
After=network.target

[Service]
Type=simple
ExecStart={cmd}
Environment={_env("TUNER_HOME", str(home))}
WorkingDirectory={path}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=120
StandardOutput=append:{path}/tunerd.out
StandardError=append:{path}/tunerd.out

[Install]
WantedBy=default.target
"""


# systemd unit syntax (systemd.unit(5), systemd.service(5), systemd.exec(5)): `%` starts a
# specifier in every setting below, so a literal one is `%%`; ExecStart= also expands `$VAR`
# (a literal `$` is `$$`); ExecStart= and Environment= split on whitespace unless a word is in
# double quotes, inside which `\\` and `\"` are a backslash and a quote (C escapes).
def _specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _double_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_arg(arg: str) -> str:
    arg = _specifiers(arg).replace("$", "$$")
    return _double_quoted(arg) if not arg or any(c in arg for c in " \t\"'\\;") else arg


def _env(name: str, value: str) -> str:
    """One Environment= assignment, always quoted: a value with a space stays one assignment."""
    return _double_quoted(_specifiers(f"{name}={value}"))


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


def install(kind: str, home: Path) -> dict:
    """Write the service file and ask the service manager to start it:
    {"kind", "path", "started", "detail"} (detail: the manager's complaint when not started)."""
    path = service_path(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(render(kind, home))
    if kind == "launchd":
        import os
        ok, out = _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)])
    else:
        ok, out = _run(["systemctl", "--user", "daemon-reload"])
        if ok:
            ok, out = _run(["systemctl", "--user", "enable", "--now", UNIT])
    return {"kind": kind, "path": str(path), "started": ok, "detail": "" if ok else out}


def uninstall(kind: str) -> dict:
    """Stop the service and remove its file: {"kind", "path", "removed"}."""
    path = service_path(kind)
    if kind == "launchd":
        import os
        _run(["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"])
    else:
        _run(["systemctl", "--user", "disable", "--now", UNIT])
    removed = path.exists()
    if removed:
        path.unlink()
    return {"kind": kind, "path": str(path), "removed": removed}


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
