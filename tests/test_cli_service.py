"""`tunerctl service`: unit and plist text that survive odd homes, exit codes, --json."""
from __future__ import annotations

import configparser
import json
import plistlib
import shlex
import shutil
import subprocess
import sys

import pytest
from daemon_utils import cli, json_lines, short_home

ODD = 'my home %h $USER "q" back\\slash'   # a space, a systemd specifier, a variable, quotes, a backslash


def _odd_home():
    home = short_home() / ODD
    home.mkdir()
    return home.resolve()


def _unit(text: str) -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string(text)
    return unit["Service"]


def _unquote(value: str) -> list[str]:
    """systemd's word splitting for ExecStart=/Environment= (double quotes, C escapes), then `%%`
    -> `%` and `$$` -> `$` (specifier and variable escapes)."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def test_systemd_unit_quotes_a_home_with_spaces_and_specifiers(tmp_path):
    home = _odd_home()
    p = cli(home, "service", "install", "--dry-run", "--platform", "systemd", check=True)
    service = _unit(p.stdout)
    assert _unquote(service["Environment"]) == [f"TUNER_HOME={home}"]
    assert _unquote(service["ExecStart"]) == [sys.executable, "-m", "tunerd", "--home", str(home)]
    assert service["WorkingDirectory"].replace("%%", "%") == str(home)
    assert service["StandardOutput"].replace("%%", "%") == f"append:{home}/tunerd.out"
    if shutil.which("systemd-analyze"):  # systemd's own parser: it names the file for every bad line
        f = tmp_path / "tunerd.service"
        f.write_text(p.stdout)
        v = subprocess.run(["systemd-analyze", "--man=no", "verify", str(f)], capture_output=True, text=True)
        assert str(f) not in v.stderr, v.stderr


def test_launchd_plist_keeps_a_home_with_spaces_and_markup_exact():
    home = short_home() / "a b & <c>"
    home.mkdir()
    home = home.resolve()
    plist = plistlib.loads(cli(home, "service", "install", "--dry-run", "--platform", "launchd", check=True)
                           .stdout.encode())
    assert plist["ProgramArguments"] == [sys.executable, "-m", "tunerd", "--home", str(home)]
    assert plist["EnvironmentVariables"] == {"TUNER_HOME": str(home)}
    assert plist["WorkingDirectory"] == str(home)
    assert plist["StandardOutPath"] == str(home / "tunerd.out")


def test_dry_run_json_carries_the_text():
    home = short_home()
    r = json_lines(cli(home, "service", "install", "--dry-run", "--platform", "systemd", "--json",
                       check=True).stdout)[0]
    assert r["kind"] == "systemd" and r["path"].endswith("systemd/user/tunerd.service")
    assert "[Service]" in r["content"]


@pytest.fixture
def fake_manager(tmp_path, monkeypatch):
    """A $HOME of our own (the unit is written under it) and a `systemctl` that answers as told."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    def answer(rc: int, text: str = "") -> None:
        f = bin_dir / "systemctl"
        f.write_text(f"#!/bin/sh\necho {shlex.quote(text)} >&2\nexit {rc}\n")
        f.chmod(0o755)
    return answer, tmp_path / "user" / ".config" / "systemd" / "user" / "tunerd.service"


def test_install_that_cannot_start_the_service_fails(fake_manager):
    answer, unit = fake_manager
    answer(1, "Failed to connect to bus: No medium found")
    home = short_home()
    p = cli(home, "service", "install", "--platform", "systemd")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "could not start the service" in p.stderr and "No medium found" in p.stderr
    assert unit.exists()
    p = cli(home, "service", "install", "--platform", "systemd", "--json")
    assert p.returncode == 1
    r = json_lines(p.stdout)[0]
    assert r == {"kind": "systemd", "path": str(unit), "started": False,
                 "detail": "Failed to connect to bus: No medium found"}


def test_install_status_uninstall_json(fake_manager):
    answer, unit = fake_manager
    answer(0, "active")
    home = short_home()
    p = cli(home, "service", "install", "--platform", "systemd", "--json", check=True)
    assert json.loads(p.stdout) == {"kind": "systemd", "path": str(unit), "started": True, "detail": ""}
    assert "service started" in cli(home, "service", "install", "--platform", "systemd", check=True).stdout
    st = json_lines(cli(home, "service", "status", "--platform", "systemd", "--json", check=True).stdout)[0]
    assert st["installed"] is True and st["manager"] == "active"
    r = json_lines(cli(home, "service", "uninstall", "--platform", "systemd", "--json", check=True).stdout)[0]
    assert r == {"kind": "systemd", "path": str(unit), "removed": True}
    assert not unit.exists()
    r = json_lines(cli(home, "service", "uninstall", "--platform", "systemd", "--json", check=True).stdout)[0]
    assert r["removed"] is False
