"""Issue 23, the daemon-side items, through the real CLI and daemon: bad data refused at submit
(item 4), one fast offline rule (item 8), recommend --write (item 6), the live view (item 9) and
the report (item 12)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from unittest import mock

import pytest

from daemon_utils import DaemonProcess, cli, free_port, json_lines, short_home, write_config


def _err(p) -> dict:
    return json_lines(p.stdout)[-1].get("error", {}) if json_lines(p.stdout) else {}


# -- item 4: submit runs data inspect's checks ---------------------------------------------------------
def test_a_detached_job_with_bad_data_is_refused_at_submit(daemon, demo_bundle, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(x) for x in Path(demo_bundle["train"]).read_text().splitlines()[:5]]
    bad.write_text("\n".join([json.dumps(rows[0]), json.dumps({"prompt": 3}), json.dumps(rows[1]),
                              json.dumps({k: "" for k in rows[0]})]) + "\n")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text(json.dumps(rows[0]) + "\n{\"prompt\": \n")
    before = len(json_lines(cli(daemon.home, "--json", "jobs", "list", check=True).stdout))
    for data, where in ((bad, f"{bad}:2"), (malformed, f"{malformed}:2: malformed JSON")):
        cfg = write_config(tmp_path / f"{data.stem}.yaml", demo_bundle, data={"train": str(data)})
        t0 = time.monotonic()
        p = cli(daemon.home, "--json", "train", str(cfg), "--detach")
        assert p.returncode != 0, p.stdout + p.stderr
        err = _err(p)
        assert err.get("code") == "INVALID_ARGUMENT" and where in err["message"], p.stdout + p.stderr
        assert time.monotonic() - t0 < 30
    p = cli(daemon.home, "--json", "train", str(tmp_path / "bad.yaml"), "--detach")
    assert f"{bad}:2" in _err(p)["message"] and f"{bad}:4" in _err(p)["message"], _err(p)
    assert len(json_lines(cli(daemon.home, "--json", "jobs", "list", check=True).stdout)) == before  # no job
    log = (daemon.home / "tunerd.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_submit_checks_a_bounded_sample_of_big_data(demo_bundle, tmp_path, monkeypatch):
    """Beyond SUBMIT_FULL_BYTES the rows checked are the first SUBMIT_SAMPLE_ROWS of each file;
    the UTF-8 scan still reads all of it."""
    from tunerd.config.loader import load_config
    from tunerd.data import inspect
    from tunerd.data.errors import DataError

    good = Path(demo_bundle["train"]).read_text().splitlines()[0]
    f = tmp_path / "big.jsonl"
    f.write_text("\n".join([good] * 30 + [json.dumps({"prompt": 3})] + [good] * 10) + "\n")
    cfg = load_config(write_config(tmp_path / "c.yaml", demo_bundle, data={"train": str(f)}))
    monkeypatch.setattr(inspect, "SUBMIT_FULL_BYTES", 100)
    monkeypatch.setattr(inspect, "SUBMIT_SAMPLE_ROWS", 20)
    inspect.check_for_submit(cfg, tmp_path)     # the bad row 31 is past the sample
    monkeypatch.setattr(inspect, "SUBMIT_SAMPLE_ROWS", 40)
    with pytest.raises(DataError, match=r"first 40 rows(.|\n)*big.jsonl:31"):
        inspect.check_for_submit(cfg, tmp_path)
    f.write_bytes(f.read_bytes() + b"\xff\n")
    monkeypatch.setattr(inspect, "SUBMIT_SAMPLE_ROWS", 5)
    with pytest.raises(DataError, match="not valid UTF-8"):
        inspect.check_for_submit(cfg, tmp_path)


# -- item 8: one fast offline rule -------------------------------------------------------------------
@pytest.fixture(scope="module")
def unreachable_hub():
    """A daemon that is not told it is offline, whose hub (HF_ENDPOINT) is a closed port."""
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    with mock.patch.dict(os.environ, env):
        d = DaemonProcess(short_home()).start()
    yield d
    d.stop()


@pytest.mark.parametrize("which", ["offline", "unreachable"])
def test_an_uncached_hub_id_is_unavailable_at_once_everywhere(daemon, unreachable_hub, demo_bundle, tmp_path,
                                                              which):
    d = daemon if which == "offline" else unreachable_hub
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, model="no-such-org/no-such-model")
    calls = {"recommend": ("recommend", "--model", "no-such-org/no-such-model", "--rows", "100"),
             "submit": ("train", str(cfg), "--detach"),
             "data inspect": ("data", "inspect", "no-such-org/no-such-data"),
             "inspect --model": ("data", "inspect", demo_bundle["train"], "--model", "no-such-org/no-such-model"),
             "chat": ("chat", "--model", "no-such-org/no-such-model", "-p", "hi")}
    for name, args in calls.items():
        t0 = time.monotonic()
        p = cli(d.home, "--json", *args, cwd=tmp_path)
        took = time.monotonic() - t0
        err = _err(p)
        assert p.returncode != 0 and err.get("code") == "UNAVAILABLE", (name, p.stdout, p.stderr)
        assert "no-such-org/no-such-" in err["message"], (name, err)
        assert took < 10, (name, took)   # the CLI's start-up included; no retries
