"""One daemon per home, a trusted home and token, `daemon stop` signalling only the lock holder
(issue 9, findings 2, 3 and 6): the real daemon and CLI over a real Unix socket."""
from __future__ import annotations

import os
import socket as s
import stat
import subprocess
import sys
import time

import grpc
import pytest
from tuner.v1 import tuner_pb2 as pb
from tuner.v1 import tuner_pb2_grpc

from daemon_utils import DaemonProcess, cli, job_state, json_lines, short_home, wait_for, write_config

pytestmark = pytest.mark.slow


def tunerd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunerd", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with s.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- finding 2: two daemons on one home ---------------------------------------------------------
def test_second_daemon_on_the_same_home_exits_naming_the_holder(demo_bundle, tmp_path):
    home = short_home()
    d = DaemonProcess(home).start()
    try:
        stub = d.stub()
        cfg = write_config(tmp_path / "long.yaml", demo_bundle, max_steps=100000, save_steps=100000,
                           eval_steps=100000)
        job_id = json_lines(cli(home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
        wait_for(lambda: job_state(stub, job_id) == "running", what="the job running")

        other = short_home() / "other.sock"  # another socket does not make another home
        p = tunerd("--home", str(home), "--socket", str(other))
        assert p.returncode != 0
        assert f"pid {d.proc.pid}" in p.stderr and "already running" in p.stderr, p.stderr
        assert not other.exists()
        assert job_state(stub, job_id) == "running"  # not marked interrupted by the second one

        # the socket deleted: the CLI reports the live daemon instead of starting a second one
        d.socket.unlink()
        p = cli(home, "jobs", "list", "--json", timeout=60)
        assert p.returncode != 0
        assert f"pid {d.proc.pid}" in p.stdout + p.stderr, p.stdout + p.stderr
        p = cli(home, "daemon", "status", "--json")
        assert p.returncode != 0 and json_lines(p.stdout)[0]["pid"] == d.proc.pid
        assert d.proc.poll() is None
        assert not d.socket.exists()  # nobody else bound it
        # `daemon stop` still finds and stops the one holding the lock
        assert cli(home, "daemon", "stop", check=True).returncode == 0
        assert d.proc.wait(30) == 0
    finally:
        d.stop()


def test_parallel_autostarts_start_one_daemon():
    home = short_home()
    starts = [subprocess.Popen([sys.executable, "-m", "tunerctl", "--home", str(home), "jobs", "list", "--json"],
                               env=dict(os.environ, TUNER_HOME=str(home)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        outs = [p.communicate(timeout=120) for p in starts]
        assert all(p.returncode == 0 for p in starts), outs
        ready = (home / "tunerd.log").read_text().count(" ready (pid ")
        assert ready == 1, (home / "tunerd.log").read_text()[-3000:]
    finally:
        cli(home, "daemon", "stop")


# -- finding 6: `daemon stop` and a stale pid ----------------------------------------------------
def test_daemon_stop_signals_only_the_lock_holder():
    home = short_home()
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        (home / "tunerd.pid").write_text(str(bystander.pid))  # a stale pid file naming someone else
        p = cli(home, "daemon", "stop")
        assert p.returncode == 0 and "not running" in p.stdout
        d = DaemonProcess(home).start()
        try:
            (home / "tunerd.pid").write_text(str(bystander.pid))
            cli(home, "daemon", "stop", check=True)
            assert d.proc.wait(30) == 0
        finally:
            d.stop()
        time.sleep(0.2)
        assert bystander.poll() is None, "an unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait()


# -- finding 3: a home, socket and token made by someone else -----------------------------------
def test_world_writable_home_is_refused_with_the_fix():
    home = short_home()
    os.chmod(home, 0o777)
    p = tunerd("--home", str(home))
    assert p.returncode != 0
    assert f"chmod 700 {home}" in p.stderr, p.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o777 and not (home / "jobs.db").exists()
    # the CLI's auto-start does not quietly chmod it either
    p = cli(home, "jobs", "list", "--json", timeout=60)
    assert p.returncode != 0 and f"chmod 700 {home}" in p.stdout + p.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o777


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory owned by another uid needs root")
def test_home_owned_by_another_user_is_refused():
    home = short_home()
    os.chown(home, 4242, 4242)
    os.chmod(home, 0o700)
    p = tunerd("--home", str(home))
    assert p.returncode != 0
    assert "owned by uid 4242" in p.stderr and "another --home" in p.stderr, p.stderr


def test_a_planted_file_at_the_socket_path_is_an_error_not_removed():
    home = short_home()
    planted = home / "tunerd.sock"
    planted.write_text("not a socket")
    p = tunerd("--home", str(home))
    assert p.returncode != 0 and "is not ours" in p.stderr, p.stderr
    assert planted.read_text() == "not a socket"


def test_a_stale_socket_of_ours_is_replaced():
    home = short_home()
    sock = s.socket(s.AF_UNIX)
    sock.bind(str(home / "tunerd.sock"))
    sock.close()  # a socket file nobody listens on: what a SIGKILLed daemon leaves
    d = DaemonProcess(home).start()
    d.stop()
    assert "removed the stale socket" in (home / "tunerd.log").read_text()


@pytest.mark.parametrize("planted, mode", [("attackertoken", 0o644), ("attackertoken", 0o600), ("", 0o600)])
def test_untrusted_token_is_regenerated_and_empty_bearer_rejected(planted, mode):
    home = short_home()
    (home / "token").write_text(planted + "\n")
    os.chmod(home / "token", mode)
    port = free_port()
    d = DaemonProcess(home, "--listen", f"127.0.0.1:{port}").start()
    try:
        token = (home / "token").read_text().strip()
        assert token != planted and len(token) >= 40
        assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
        assert "generated a new token" in (home / "tunerd.log").read_text()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = tuner_pb2_grpc.TunerStub(ch)
            for bad in (f"Bearer {planted}", "Bearer ", "Bearer", ""):
                with pytest.raises(grpc.RpcError) as e:
                    stub.GetInfo(pb.GetInfoRequest(), metadata=[("authorization", bad)], timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, bad
            info = stub.GetInfo(pb.GetInfoRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
            assert info.api_version == "tuner.v1"
    finally:
        d.stop()
