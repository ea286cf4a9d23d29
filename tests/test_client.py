"""`tuner.Client`, the library other apps use (and tunerctl), against the real daemon process on its
real Unix socket with the tiny demo model."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from tuner import Client, DaemonUnavailable, TunerError
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import short_home, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(daemon):
    with Client.connect(home=daemon.home) as c:
        yield c


def test_connect_by_home_reaches_that_daemon(client, daemon):
    info = client.info()
    assert info.api_version == "tuner.v1" and Path(info.home).resolve() == daemon.home.resolve()
    assert client.healthy()


def test_the_same_daemon_by_its_socket_address(daemon):
    with Client.connect(address=f"unix://{daemon.socket}") as c:
        assert c.info().pid == daemon.proc.pid


def test_submit_and_watch_a_job_to_its_end(client, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, max_steps=4, eval_steps=4, save_steps=4, logging_steps=2)
    job = client.submit(config_path=str(cfg), name="from-client")
    assert job.id and job.name == "from-client"
    events = list(client.watch(job.id))
    kinds = [e.WhichOneof("event") for e in events]
    assert "started" in kinds and kinds.count("step") == 2 and kinds[-1] in ("finished", "state_changed")
    finished = next(e.finished for e in events if e.HasField("finished"))
    assert finished.steps == 4 and finished.adapter_path
    done = client.job(job.id)
    assert done.state == pb.SUCCEEDED and done.step == 4
    assert job.id in [j.id for j in client.jobs()]


def test_submit_takes_typed_config_keys(client, demo_bundle):
    job = client.submit({"model": demo_bundle["model"], "backend": "mlx", "max_steps": 2, "logging_steps": 1,
                         "per_device_train_batch_size": 4, "max_seq_length": 128, "save_strategy": "no", "eval_strategy": "no",
                         "data": {"train": [demo_bundle["train"]]}})
    assert [e.finished.steps for e in client.watch(job.id) if e.HasField("finished")] == [2]
    with pytest.raises(ValueError, match="learning_rat"):
        client.submit({"model": demo_bundle["model"], "learning_rat": 0.1})


def test_chat_streams_a_few_tokens_then_the_finish(client, demo_bundle):
    chunks = list(client.chat([{"role": "user", "content": demo_bundle["rows"][0]["prompt"]}],
                              model=demo_bundle["model"], backend="mlx",
                              sampling={"temperature": 0.0, "max_tokens": 4}))
    assert "".join(c.delta for c in chunks)
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and 0 < last.usage.completion_tokens <= 4
    assert demo_bundle["model"] in [m.model for m in client.models()]   # resident after the chat


def test_an_unknown_job_is_one_error_type_with_not_found(client):
    with pytest.raises(TunerError) as e:
        client.job("no-such-job")
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "no-such-job" in e.value.details
    with pytest.raises(TunerError) as e:   # a stream fails the same way
        list(client.watch("no-such-job"))
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_no_daemon_is_a_tuner_error_too():
    with pytest.raises(DaemonUnavailable) as e:
        Client.connect(home=short_home())
    assert isinstance(e.value, TunerError) and e.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no daemon answers" in e.value.details


def test_every_rpc_has_a_client_method():
    import inspect

    source = inspect.getsource(Client)
    rpcs = pb.DESCRIPTOR.services_by_name["Tuner"].methods
    assert [m.name for m in rpcs if f'"{m.name}"' not in source] == []
