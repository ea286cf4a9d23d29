"""CLI behaviour that needs no training: service files, stub freshness, import hygiene."""
from __future__ import annotations

import configparser
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

from daemon_utils import cli, short_home

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh():
    p = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_client_imports_no_ml_packages():
    code = ("import sys, tunerctl.cli, tunerctl.demo, tunerctl.progress; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mlx', 'mlx_lm', 'transformers', "
            "'numpy', 'tunerd', 'yaml')]; print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_launchd_plist_is_valid():
    home = short_home()
    p = cli(home, "service", "install", "--dry-run", "--platform", "launchd", check=True)
    plist = plistlib.loads(p.stdout.encode())
    assert plist["Label"] == "com.mactuner.tunerd"
    assert plist["RunAtLoad"] is True and plist["KeepAlive"]
    assert plist["ProgramArguments"][1:3] == ["-m", "tunerd"]
    assert plist["EnvironmentVariables"]["TUNER_HOME"] == str(home.resolve())
    assert plist["StandardOutPath"].startswith(str(home.resolve()))
    assert plist["StandardErrorPath"].startswith(str(home.resolve()))


def test_systemd_unit_is_valid(tmp_path):
    home = short_home()
    p = cli(home, "service", "install", "--dry-run", "--platform", "systemd", check=True)
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string(p.stdout)
    assert unit["Service"]["ExecStart"].split()[1:3] == ["-m", "tunerd"]
    assert unit["Service"]["Environment"] == f'"TUNER_HOME={home.resolve()}"'  # quoted: a home may hold spaces
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "default.target"
    if shutil.which("systemd-analyze"):
        f = tmp_path / "tunerd.service"
        f.write_text(p.stdout)
        v = subprocess.run(["systemd-analyze", "--user", "verify", str(f)], capture_output=True, text=True)
        assert "tunerd.service" not in v.stderr or v.returncode == 0, v.stderr


def test_json_errors_when_no_daemon_over_tcp():
    p = cli(short_home(), "--listen", "127.0.0.1:1", "jobs", "list", "--json")
    assert p.returncode == 1
    assert '"error"' in p.stdout


def test_daemon_start_status_stop_via_cli():
    home = short_home()
    try:
        cli(home, "daemon", "start", check=True)
        p = cli(home, "daemon", "status", "--json", check=True)
        assert '"api_version": "tuner.v1"' in p.stdout
        # the CLI auto-starts nothing twice: start again is a no-op
        assert "already running" in cli(home, "daemon", "start", check=True).stdout
    finally:
        cli(home, "daemon", "stop", check=True)
    assert cli(home, "daemon", "status").returncode == 3
    assert "ready" in cli(home, "daemon", "logs", check=True).stdout
