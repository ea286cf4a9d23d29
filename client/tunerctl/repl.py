"""`tunerctl chat`: the interactive REPL over the public Chat RPC.

Line editing, history (Up/Down, Ctrl-R; kept in $TUNER_HOME/chat_history) and multi-line input
come from prompt_toolkit: a paste keeps its newlines (bracketed paste), Alt-Enter (Esc, Enter)
starts a new line, Enter sends. Ctrl-C stops an answer (or clears the line), Ctrl-D exits.
Slash commands change the conversation and the sampling; /help lists them.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import grpc
from rich.markup import escape
from tuner import DaemonUnavailable, Stream, TunerError

from .progress import DownloadView
from .ui import console

HELP = """commands:
  /help                     this list
  /params                   show the sampling parameters (the values in effect)
  /params NAME VALUE        set one (temperature, top_p, top_k, min_p, repetition_penalty, seed,
                            max_tokens, stop); VALUE "none" unsets it; a stop string in double
                            quotes is read as JSON: /params stop "\\n", /params stop " User:"
  /adapter PATH|job:ID|none use an adapter (or none: the base model)
  /system [TEXT]            set (or clear) the system prompt
  /reset                    forget the conversation
  /save [FILE]              write the conversation as JSON (default chat.json)
  /load FILE                read a conversation saved with /save
  /quit                     exit (or Ctrl-D)
keys: Enter sends; Alt-Enter (Esc, Enter) or a paste adds lines; Up/Down and Ctrl-R search history;
Ctrl-C stops an answer."""

PARAMS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float,
          "seed": int, "max_tokens": int, "stop": str}

# what an unset parameter means (the daemon's defaults, tunerd.backends.generation.Sampling):
# /params shows these rather than None
DEFAULTS = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            "seed": "random", "max_tokens": 256, "stop": []}


class Target(NamedTuple):
    """What the daemon resolved an adapter (and the model) to: the base model and its positions."""
    model: str
    context_length: int   # 0: unknown


@dataclass
class Conversation:
    system: str = ""
    turns: list = field(default_factory=list)   # user/assistant messages

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.messages(), indent=2, ensure_ascii=False))

    def load(self, path: Path) -> None:
        msgs = json.loads(path.read_text())
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise ValueError(f"{path}: not a saved conversation (a JSON list of messages)")
        self.system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        self.turns = [m for m in msgs if m["role"] != "system"]


def make_reader(history_file: Path) -> Callable[[str], str]:
    """A line reader: prompt_toolkit on a terminal, plain input() otherwise (pipes, scripts)."""
    if not sys.stdin.isatty():
        return input
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _(event):
        event.current_buffer.insert_text("\n")

    history_file.parent.mkdir(parents=True, exist_ok=True)
    session = PromptSession(history=FileHistory(str(history_file)), key_bindings=keys,
                            enable_history_search=False, prompt_continuation="... ")
    return lambda prompt: session.prompt(prompt)


class Repl:
    def __init__(self, chat: Callable[[list, dict], Stream], params: dict, adapter: str,
                 system: str = "", history_file: Optional[Path] = None,
                 resolve: Callable[[str], str] = lambda x: x, model: str = "",
                 check: Optional[Callable[[str, str], Target]] = None):
        """`chat(messages, params)`: the answer's stream (tuner.Client.chat); params hold the
        sampling values, the model and the adapter. `check(model, adapter)`: what the daemon
        resolves them to (it raises TunerError for an unknown job or folder), so /adapter and
        /params are checked when typed."""
        self.chat, self.params, self.adapter, self.model = chat, params, adapter, model
        self.resolve, self.check = resolve, check
        self._targets: dict = {}   # (model, adapter) -> Target, as the daemon resolved them
        self.conv = Conversation(system)
        self.read = make_reader(history_file or Path("chat_history"))

    def run(self) -> int:
        console.print("[dim]chat: /help for commands, Ctrl-D to exit[/]")
        while True:
            try:
                line = self.read(">>> ")
            except KeyboardInterrupt:
                continue   # Ctrl-C at the prompt clears the line
            except EOFError:
                console.print()
                return 0
            if not line.strip():
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        return 0
                    continue
                self.ask(line)
            except KeyboardInterrupt:   # e.g. while /adapter waits for the daemon
                console.print("\n[dim](stopped)[/]")
            except TunerError as e:
                if isinstance(e, DaemonUnavailable) or e.code == grpc.StatusCode.UNAVAILABLE:
                    raise   # the daemon is gone: tunerctl says so and exits
                console.print(f"\n[red]error:[/] {escape(e.details)}", highlight=False)
            except Exception as e:   # any other error: said, and the session (and its history) goes on
                console.print(f"\n[red]error:[/] {escape(f'{type(e).__name__}: {e}')}", highlight=False)

    def ask(self, text: str) -> None:
        self.conv.turns.append({"role": "user", "content": text})
        try:
            call = self.chat(self.conv.messages(), {**self.params, "adapter": self.adapter, "model": self.model})
        except BaseException:
            self.conv.turns.pop()
            raise
        reply, usage, t0 = [], None, time.perf_counter()
        downloads = DownloadView(console)   # a hub model fetched before the first answer
        try:
            for chunk in call:
                if chunk.HasField("download"):
                    downloads.update(chunk.download)
                if chunk.delta:
                    reply.append(chunk.delta)
                    console.print(chunk.delta, end="", markup=False, highlight=False, soft_wrap=True)
                if chunk.finish_reason:
                    usage = chunk.usage
        except KeyboardInterrupt:
            downloads.stop()
            call.cancel()
            console.print("\n[dim](stopped)[/]")
            if reply:
                self.conv.turns.append({"role": "assistant", "content": "".join(reply)})
            else:
                self.conv.turns.pop()
            return
        except TunerError as e:   # this answer failed (e.g. it cannot fit the context): the session goes on
            if isinstance(e, DaemonUnavailable) or e.code == grpc.StatusCode.UNAVAILABLE:
                raise   # the daemon is gone: tunerctl says so and exits
            downloads.stop()
            self.conv.turns.pop()
            console.print(f"\n[red]error:[/] {escape(e.details)}", highlight=False)
            return
        console.print()
        self.conv.turns.append({"role": "assistant", "content": "".join(reply)})
        if usage is not None:
            console.print(f"[dim]{usage.completion_tokens} tokens, {usage.tokens_per_second:.1f} tok/s, "
                          f"first token {usage.time_to_first_token_seconds:.2f}s "
                          f"({time.perf_counter() - t0:.2f}s in all)[/]")

    def command(self, line: str) -> Optional[str]:
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        try:
            if name in ("quit", "exit", "bye"):
                return "quit"
            if name == "help":
                console.print(HELP, markup=False)
            elif name == "params":
                self.set_param(rest) if rest else console.print(
                    "  ".join(f"{k}={v}" for k, v in self.shown_params().items()), markup=False)
            elif name == "adapter":
                self.set_adapter(rest)
            elif name == "system":
                self.conv.system = rest
                console.print(f"[dim]system prompt {'set' if rest else 'cleared'}[/]")
            elif name == "reset":
                self.conv.turns = []
                console.print("[dim]conversation cleared[/]")
            elif name == "save":
                path = Path(rest or "chat.json").expanduser()
                self.conv.save(path)
                console.print(f"[dim]saved {len(self.conv.turns)} messages to {path}[/]")
            elif name == "load":
                if not rest:
                    raise ValueError("/load FILE")
                self.conv.load(Path(rest).expanduser())
                console.print(f"[dim]loaded {len(self.conv.turns)} messages from {rest}[/]")
            else:
                console.print(f"[dim]unknown command /{name}; /help lists them[/]")
        except (ValueError, OSError) as e:
            console.print(f"[red]{e}[/]", markup=True)
        return None

    def target(self, adapter: str) -> Optional[Target]:
        """The daemon's resolution of this model with `adapter` (remembered); None without a checker."""
        if self.check is None:
            return None
        key = (self.model, adapter)
        if key not in self._targets:
            self._targets[key] = self.check(self.model, adapter)
        return self._targets[key]

    def set_adapter(self, rest: str) -> None:
        """/adapter X: resolved through the daemon now (an unknown job or folder is said here and
        the old adapter stays); /adapter none keeps the base of the adapter in use."""
        if rest in ("", "none"):
            if not self.model and self.adapter:   # the model was the adapter's base: keep it
                t = self.target(self.adapter)
                if t is not None:
                    self.model = t.model
            self.adapter = ""
            console.print(f"[dim]adapter: none (the base model{f' {self.model}' if self.model else ''})[/]",
                          highlight=False)
            return
        ref = self.resolve(rest)
        t = self.target(ref)   # raises: the old adapter stays
        self.adapter = ref
        console.print(f"[dim]adapter: {escape(ref)}{f' on {escape(t.model)}' if t else ''}[/]", highlight=False)

    def shown_params(self) -> dict:
        """The values in effect: what was set, else the daemon's default."""
        return {k: self.params.get(k) if self.params.get(k) not in (None, []) else DEFAULTS[k] for k in PARAMS}

    def set_param(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        key, value = key.replace("-", "_"), value.strip()
        if key not in PARAMS:
            raise ValueError(f"/params: unknown {key!r}; one of {', '.join(PARAMS)}")
        if value in ("", "none"):
            self.params[key] = [] if key == "stop" else None
        elif key == "stop":
            if value.startswith('"'):   # spaces at either end, newlines: a JSON string
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise ValueError(f'/params stop: {value} is not a JSON string (e.g. "\\n" or " User:")') from None
            self.params["stop"] = [*(self.params.get("stop") or []), value]
        else:
            try:
                v = PARAMS[key](value)
            except ValueError:
                raise ValueError(f"/params {key}: {value!r} is not a {PARAMS[key].__name__}") from None
            if key == "max_tokens":
                self.check_max_tokens(v)
            self.params[key] = v
        console.print(f"[dim]{key} = {self.params[key]}[/]")

    def check_max_tokens(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"/params max_tokens: must be at least 1, got {n}")
        t = self.target(self.adapter) if self.model or self.adapter else None
        if t is not None and t.context_length and n >= t.context_length:
            raise ValueError(f"/params max_tokens: {n} does not fit the model's context of {t.context_length} "
                             f"positions (the prompt needs some too); use fewer, e.g. {t.context_length // 2}")
