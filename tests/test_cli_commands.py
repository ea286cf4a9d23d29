"""tunerctl as a new user meets it: --version, --json on daemon commands, help with defaults."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from daemon_utils import cli, json_lines, short_home
from tunerctl import __version__
from tunerctl.cli import build_parser


def test_version_without_a_daemon_starts_none():
    home = short_home()
    p = cli(home, "--version", check=True)
    assert p.stdout.splitlines()[0] == f"tunerctl {__version__}"
    assert "tunerd: not running" in p.stdout
    assert json_lines(cli(home, "--version", "--json", check=True).stdout) == [{"tunerctl": __version__,
                                                                                "tunerd": None}]
    assert not (home / "tunerd.sock").exists()


def test_no_command_is_a_usage_error():
    p = cli(short_home())
    assert p.returncode == 2 and "COMMAND" in p.stderr


def test_daemon_start_version_logs_stop_speak_json():
    home = short_home()
    try:
        r = json_lines(cli(home, "daemon", "start", "--json", check=True).stdout)[0]
        assert r["started"] is True and r["pid"] > 0 and r["address"].startswith("unix://")
        pid = r["pid"]
        again = json_lines(cli(home, "daemon", "start", "--json", check=True).stdout)[0]
        assert again == {"running": True, "started": False, "address": r["address"]}
        busy = cli(home, "daemon", "start", "--http", "127.0.0.1:1")   # running without it: not applied, rc != 0
        assert busy.returncode != 0 and "--http 127.0.0.1:1 was not applied" in " ".join(busy.stderr.split()), busy

        v = json_lines(cli(home, "--version", "--json", check=True).stdout)[0]
        assert v["tunerctl"] == __version__ and v["tunerd"]["pid"] == pid
        assert v["tunerd"]["api_version"] == "tuner.v1" and v["tunerd"]["version"]
        assert f"tunerd {v['tunerd']['version']} (tuner.v1, pid {pid})" in cli(home, "--version", check=True).stdout

        records = json_lines(cli(home, "daemon", "logs", "--json", "-n", "100", check=True).stdout)
        assert records and all("message" in r for r in records)
        assert any(r.get("level") == "INFO" and r["message"].startswith("listening on unix://") for r in records)

        env = dict(os.environ, TUNER_HOME=str(home))  # -f --json: records as they are written
        f = subprocess.Popen([sys.executable, "-m", "tunerctl", "--home", str(home), "daemon", "logs", "-f",
                              "-n", "1", "--json"], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert "message" in json.loads(f.stdout.readline())
        finally:
            f.terminate()
            f.wait(10)
    finally:
        stop = cli(home, "daemon", "stop", "--json", check=True)
    assert json_lines(stop.stdout)[0] == {"running": False, "stopped": True, "pid": pid}
    assert json_lines(cli(home, "daemon", "stop", "--json", check=True).stdout)[0] == {"running": False,
                                                                                       "stopped": False}


def test_daemon_logs_without_a_log_is_a_json_error():
    p = cli(short_home(), "daemon", "logs", "--json")
    assert p.returncode == 1
    assert "no log yet" in json_lines(p.stdout)[0]["error"]["message"]


def _subcommand(path: list[str]):
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [["chat"], ["generate"], ["evaluate"], ["data", "inspect"]])
def test_every_flag_has_help_with_its_default(path):
    own = {"--home", "--socket", "--listen", "--token", "--tls-ca", "--json", "-h"}  # global, documented once
    flags = [a for a in _subcommand(path)._actions if a.option_strings and not own & set(a.option_strings)]
    assert flags
    for a in flags:
        assert a.help and ("default" in a.help or a.required), f"{' '.join(path)} {a.option_strings[0]}: {a.help!r}"
    text = cli(short_home(), *path, "--help", check=True).stdout
    for a in flags:
        assert a.option_strings[-1] in text


def test_help_states_the_sampling_defaults():
    text = " ".join(cli(short_home(), "chat", "--help", check=True).stdout.split())
    for needle in ("(default: 0, greedy)", "(default: 256)", "(default: 1.0, off)", "(default: auto"):
        assert needle in text, needle
