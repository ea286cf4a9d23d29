"""Open streams never starve unary calls (issue 9, finding 4): 100 watchers on a training job,
and health, ListJobs and GetJob still answer at once. The real daemon over its Unix socket."""
from __future__ import annotations

import statistics
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tuner.v1 import tuner_pb2 as pb
from tuner.v1 import tuner_pb2_grpc

from daemon_utils import DaemonProcess, cli, job_state, json_lines, short_home, wait_for, write_config, SLACK

pytestmark = pytest.mark.slow


def test_100_open_watchers_do_not_starve_health_or_unary_calls(demo_bundle, tmp_path):
    home = short_home()
    d = DaemonProcess(home).start()
    channels, calls = [], []
    try:
        cfg = write_config(tmp_path / "long.yaml", demo_bundle, max_steps=100000, save_steps=100000,
                           eval_steps=100000, logging_steps=50)
        job_id = json_lines(cli(home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
        stub = d.stub()
        wait_for(lambda: job_state(stub, job_id) == "running", what="the job running")
        for i in range(100):
            if i % 25 == 0:
                channels.append(d.channel())
            call = tuner_pb2_grpc.TunerStub(channels[-1]).WatchJob(
                pb.WatchJobRequest(job_id=job_id, from_sequence=1, follow=True))
            next(call)  # the handler is running on the server: it holds its thread from here on
            calls.append(call)

        with d.channel() as ch:
            health = health_pb2_grpc.HealthStub(ch)
            unary = tuner_pb2_grpc.TunerStub(ch)
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                r = health.Check(health_pb2.HealthCheckRequest(service="tuner.v1.Tuner"), timeout=5)
                times.append(time.perf_counter() - t0)
                assert r.status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.02)
            t0 = time.perf_counter()
            assert any(j.id == job_id for j in unary.ListJobs(pb.ListJobsRequest(), timeout=5).jobs)
            unary.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
            list_get = time.perf_counter() - t0
        print(f"health with 100 watchers: median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms; ListJobs+GetJob {list_get * 1000:.1f} ms")
        assert statistics.median(times) < 0.1 * SLACK, times
        assert max(times) < SLACK and list_get < SLACK, (times, list_get)
        # the CLI sees a running daemon (it used to report "not running" and start a second one)
        p = cli(home, "daemon", "status", "--json", timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        for c in calls:
            c.cancel()
        for ch in channels:
            ch.close()
        d.stop()
