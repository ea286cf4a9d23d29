"""The chat REPL in a pseudo-terminal (issue 10), against the real daemon: arrow-key editing,
history recall (kept under $TUNER_HOME), a multi-line paste as one turn, /help, /params, /system,
/save and /load, tokens/s after each answer, Ctrl-D to exit."""
from __future__ import annotations

import json
import time

import pytest

from daemon_utils import LEFT, PASTE_END, PASTE_START, UP, cli, json_lines, repl_answer, spawn_repl, write_config

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.slow


def spawn(d, tiny_model_dir, tmp_path):
    return spawn_repl(d.home, tmp_path, "--model", tiny_model_dir, "--backend", "torch", "--temperature", "0",
                      "--max-tokens", "4")


def test_line_editing_history_paste_and_commands(daemon, tiny_model_dir, tmp_path):
    child = spawn(daemon, tiny_model_dir, tmp_path)
    child.send("/help\r")
    child.expect_exact("/params NAME VALUE")
    child.expect_exact(">>>")
    child.send("/params max_tokens 3\r")
    child.expect_exact("max_tokens = 3")
    child.expect_exact(">>>")
    child.send("/system be brief\r")
    child.expect_exact("system prompt set")
    child.expect_exact(">>>")

    child.send("abc" + LEFT + LEFT + "X\r")          # edited in place: "aXbc"
    repl_answer(child)
    child.send(UP + "\r")                              # the last line again, from history
    repl_answer(child)
    child.send(PASTE_START + "line one\nline two" + PASTE_END + "\r")   # one turn of two lines
    repl_answer(child)
    child.send("/save conv.json\r")
    child.expect_exact("saved 6 messages")
    child.expect_exact(">>>")

    saved = json.loads((tmp_path / "conv.json").read_text())
    assert saved[0] == {"role": "system", "content": "be brief"}
    users = [m["content"] for m in saved if m["role"] == "user"]
    assert users == ["aXbc", "aXbc", "line one\nline two"]
    assert all("\x1b" not in u for u in users)

    child.send("/reset\r")
    child.expect_exact("conversation cleared")
    child.send("/load conv.json\r")
    child.expect_exact("loaded 6 messages")
    child.expect_exact(">>>")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (daemon.home / "chat_history").read_text()
    assert "+aXbc" in history and "+line one" in history and "+line two" in history

    # a new session recalls the previous one's lines: /load, /reset, /save, then the pasted turn
    child = spawn(daemon, tiny_model_dir, tmp_path)
    child.send(UP * 4 + "\r")
    repl_answer(child)
    child.send("/save again.json\r")
    child.expect_exact("saved 2 messages")
    child.expect_exact(">>>")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert json.loads((tmp_path / "again.json").read_text())[0] == {"role": "user", "content": "line one\nline two"}


def _first_text(child) -> str:
    """Read until the first character of text, skipping terminal escape sequences and whitespace."""
    while True:
        c = child.read_nonblocking(1, timeout=60)
        if c == "\x1b":
            nxt = child.read_nonblocking(1, timeout=60)
            if nxt == "[":   # CSI: parameters, then a final letter (or ~)
                while not (c := child.read_nonblocking(1, timeout=60)).isalpha() and c != "~":
                    pass
            continue
        if not c.isspace():
            return c


def test_ctrl_c_stops_an_answer_and_keeps_the_session(daemon, demo_bundle, tiny_model_dir, tmp_path):
    """The tiny model streams its 480 tokens in about a second: on a loaded machine the REPL saw the
    first text, and its Ctrl-C arrived, only after the daemon had finished the answer (the flake of
    the full CI runs). A training job sharing the device (turns of 0.2 s) stretches the answer over
    several seconds, as a real model's would be, so the interrupt lands while it streams."""
    cli(daemon.home, "models", "load", tiny_model_dir, "--backend", "torch", check=True)   # no load time
    cfg = write_config(tmp_path / "long.yaml", demo_bundle, backend="torch", max_steps=100000, save_steps=100000,
                       eval_steps=100000)
    job = json_lines(cli(daemon.home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
    try:
        _ctrl_c(daemon, tiny_model_dir, tmp_path)
    finally:
        cli(daemon.home, "jobs", "cancel", job)


def _ctrl_c(daemon, tiny_model_dir, tmp_path):
    child = spawn(daemon, tiny_model_dir, tmp_path)
    child.send("/params max_tokens 480\r")
    child.expect_exact(">>>")
    child.send("/params temperature 1.0\r")
    child.expect_exact(">>>")
    # ask again when a sampled answer ends on its own before the interrupt, or when (on a loaded
    # machine) the interrupt comes before the first token, so that there is no partial answer
    turns = 0   # in the conversation so far
    for attempt in range(3):
        if attempt:   # a fresh conversation: a long answer kept from the last try would not leave room for 480 more
            child.send("/reset\r")
            child.expect_exact("conversation cleared")
            child.expect_exact(">>>")
            turns = 0
        child.send("tell me a long story\r")
        child.expect_exact("tell me a long story")
        child.expect_exact("\x1b[?2004l")      # the line editor is done with the question (bracketed paste off);
        _first_text(child)                      # the answer is streaming (480 tokens: ~1-2 s, longer under load)
        child.sendintr()
        stopped = child.expect([r"\(stopped\)", r"\d+ tokens, [\d.]+ tok/s"]) == 0   # (">>>" redraws as you type)
        child.expect_exact(">>>")
        if stopped:
            child.send("/save stopped.json\r")
            child.expect_exact("saved")
            child.expect_exact(">>>")
            if len(json.loads((tmp_path / "stopped.json").read_text())) == turns + 2:   # question + partial answer
                break
        else:
            turns += 2
    else:
        pytest.fail("no answer was stopped while it streamed")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    saved = json.loads((tmp_path / "stopped.json").read_text())
    assert saved[-2] == {"role": "user", "content": "tell me a long story"}
    assert saved[-1]["role"] == "assistant" and saved[-1]["content"]   # the partial answer
    assert "cancelled after" in (daemon.home / "tunerd.log").read_text()


def test_a_failed_answer_is_an_error_line_and_the_session_goes_on(daemon, tiny_model_dir, tmp_path):
    """An answer the daemon refuses (here: max_tokens beyond the model's context) prints its error
    and leaves the conversation as it was; the next question is answered as usual."""
    cli(daemon.home, "models", "load", tiny_model_dir, "--backend", "torch", check=True)
    child = spawn(daemon, tiny_model_dir, tmp_path)
    child.send("/params max_tokens 100000\r")
    child.expect_exact(">>>")
    child.send("hello\r")
    child.expect_exact("error:")
    child.expect("exceeds the model's context")
    child.expect_exact(">>>")
    child.send("/params max_tokens 4\r")
    child.expect_exact(">>>")
    child.send("hello\r")
    assert repl_answer(child)[0] == 4
    child.send("/save after.json\r")
    child.expect_exact("saved 2 messages")   # the refused turn is not in the conversation
    child.expect_exact(">>>")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert child.wait() == 0
