"""Issue 16, findings 4, 5 (HTTP) and 8 (HTTP fields, sampling ranges): who may use the HTTP port
and what a request may carry, through a real `tunerd --http` and real HTTP (raw sockets where a
client library would correct the request)."""
from __future__ import annotations

import http.client
import json
import math
import socket
import time

import grpc
import pytest

from daemon_utils import DaemonProcess, cli, free_port, short_home, SLACK
from tuner.v1 import tuner_pb2 as pb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon_http():
    port = free_port()
    d = DaemonProcess(short_home(), "--http", f"127.0.0.1:{port}", "--http-max-body-bytes", str(1 << 20)).start()
    token = (d.home / "token").read_text().strip()
    yield d, port, token
    d.stop()


def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                got = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not got:
                break
            out += got
    return out


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


class Reply:
    def __init__(self, r: http.client.HTTPResponse):
        self.status_code, self.headers, self.text = r.status, dict(r.getheaders()), r.read().decode()

    def json(self):
        return json.loads(self.text)


def request(port, method, path, body=None, headers=None) -> Reply:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {})
        return Reply(c.getresponse())
    finally:
        c.close()


def get(port, path="/v1/models", **headers) -> Reply:
    return request(port, "GET", path, headers=headers)


def post(port, token, body, path="/v1/chat/completions", **headers) -> Reply:
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return request(port, "POST", path, data.encode() if isinstance(data, str) else data,
                   {k: v for k, v in h.items() if v is not None})


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def log_text(d) -> str:
    return (d.home / "tunerd.log").read_text()


# finding 4: the token on loopback, Host, content type

def test_loopback_needs_the_token(daemon_http):
    d, port, token = daemon_http
    r = get(port)
    assert r.status_code == 401 and "TUNER_HOME/token" in r.json()["error"]["message"]
    assert get(port, Authorization="Bearer wrong").status_code == 401
    assert get(port, Authorization=f"Bearer {token}").status_code == 200


def test_http_no_auth_serves_without_a_token_and_warns():
    port = free_port()
    d = DaemonProcess(short_home(), "--http", f"127.0.0.1:{port}", "--http-no-auth").start()
    try:
        assert get(port).status_code == 200
        assert "any local user and any web page can use" in log_text(d)
    finally:
        d.stop()
    with pytest.raises(RuntimeError, match="only allowed on a loopback"):
        DaemonProcess(short_home(), "--http", str(free_port()), "--http-host", "0.0.0.0",
                      "--http-no-auth").start(timeout=20)


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1:1", ""])
def test_a_foreign_host_header_is_refused(daemon_http, host):
    d, port, token = daemon_http
    host = host.format(port=port)
    reply = raw(port, f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                      "Connection: close\r\n\r\n".encode())
    assert status_of(reply) == 421 and b"DNS-rebinding" in reply
    for ok in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        reply = raw(port, f"GET /v1/models HTTP/1.1\r\nHost: {ok}\r\nAuthorization: Bearer {token}\r\n"
                          "Connection: close\r\n\r\n".encode())
        assert status_of(reply) == 200, ok


def test_a_web_pages_text_plain_post_is_refused_before_any_work(daemon_http, tiny_model_dir):
    d, port, token = daemon_http
    body = {"model": str(tiny_model_dir), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    before = log_text(d).count("chat with")
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = post(port, token, body, **{"Content-Type": ctype})
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    r = post(port, token, body, **{"Content-Type": None})
    assert r.status_code == 415
    assert log_text(d).count("chat with") == before
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    assert post(port, token, body, **{"Content-Type": "application/json; charset=utf-8"}).status_code == 200


# finding 5: body size, timeouts, a disconnect cancels

def test_a_huge_body_is_413_at_once_and_not_read(daemon_http):
    d, port, token = daemon_http
    rss = rss_kb(d.proc.pid)
    t0 = time.perf_counter()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 << 20}\r\n\r\n").encode()
    reply = raw(port, head + b"x" * 65536)
    assert status_of(reply) == 413 and str(1 << 20).encode() in reply
    assert time.perf_counter() - t0 < 2 * SLACK
    # chunked: no Content-Length, the limit is counted while reading
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.replace(f"Content-Length: {50 << 20}".encode(), b"Transfer-Encoding: chunked"))
        chunk = b"x" * (1 << 16)
        try:
            for _ in range(50 << 4):   # up to 50 MB
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = s.recv(65536)
    assert status_of(reply) == 413
    assert rss_kb(d.proc.pid) - rss < 100_000, "the daemon read the body"


def test_an_idle_or_slow_connection_is_closed(daemon_http):
    d, port, _ = daemon_http
    for drip in (False, True):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            t0 = time.perf_counter()
            closed = False
            while time.perf_counter() - t0 < 25:
                try:
                    if drip:
                        s.sendall(b"G")   # a byte a second: slowloris
                    s.settimeout(1)
                    if s.recv(1024) == b"":
                        closed = True
                        break
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            assert closed and time.perf_counter() - t0 < 15, ("drip" if drip else "idle")


def test_a_client_that_goes_away_cancels_a_non_streamed_reply(daemon_http, tiny_model_dir):
    d, port, token = daemon_http
    body = json.dumps({"model": str(tiny_model_dir), "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 480, "temperature": 1.0, "stop": []}).encode()
    post(port, token, {"model": str(tiny_model_dir), "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 1})   # the model is loaded
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        time.sleep(0.3)   # generating (the tiny model makes ~100 tokens/s here)
    deadline = time.time() + 10
    while time.time() < deadline and "cancelled after" not in log_text(d):
        time.sleep(0.1)
    line = [x for x in log_text(d).splitlines() if "cancelled after" in x][-1]
    assert int(line.split("cancelled after ")[1].split()[0]) < 480


# finding 8: every field typed and ranged at the edge

BAD = [
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, "messages[0].content[0]"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": 5, "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": 5}, "model"),
    ({"model": ""}, "model"),
    ({"stop": 5}, "stop"),
    ({"stop": {"a": 1}}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": "x"}, "stream_options"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": 2 ** 70}, "seed"),
    ({"max_tokens": -1}, "max_tokens"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f for _, f in BAD])
def test_each_wrong_field_is_400_naming_it(daemon_http, tiny_model_dir, change, field):
    d, port, token = daemon_http
    body = {"model": str(tiny_model_dir), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    r = post(port, token, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(field + ":"), r.text


def test_non_finite_numbers_and_non_objects_are_400(daemon_http, tiny_model_dir):
    d, port, token = daemon_http
    for text in ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                 '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}'):
        r = post(port, token, text % tiny_model_dir)
        assert r.status_code == 400 and "temperature" in r.text
    assert post(port, token, "[1, 2]").status_code == 400
    assert post(port, token, "{not json").status_code == 400
    assert "Traceback" not in log_text(d)


@pytest.mark.parametrize("field,value", [("temperature", -1.0), ("top_p", 5.0), ("top_k", -3),
                                         ("repetition_penalty", 0.0), ("min_p", math.inf)])
def test_grpc_chat_gets_the_same_range_checks(daemon_http, tiny_model_dir, field, value):
    d, _, _ = daemon_http
    req = pb.ChatRequest(model=str(tiny_model_dir), messages=[pb.ChatMessage(role="user", content="hi")],
                         sampling=pb.SamplingParams(**{field: value, "max_tokens": 2}))
    with pytest.raises(grpc.RpcError) as e:
        list(d.stub().Chat(req, timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith(field + ":")


def test_tunerctl_chat_out_of_range_is_invalid_argument_naming_the_field(daemon_http, tiny_model_dir):
    d, _, _ = daemon_http
    p = cli(d.home, "chat", "-m", tiny_model_dir, "-p", "hi", "--temperature", "-1", timeout=120)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "temperature: must be a finite number >= 0" in out and "Traceback" not in out, out
