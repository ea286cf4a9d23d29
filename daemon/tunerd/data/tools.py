"""Tool-calling chat rows (OpenAI format), validated and checked once rendered.

    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": null,
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "22 C"},
                  {"role": "assistant", "content": "It is 22 C in Paris."}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]}

The chat template renders them, as TRL does: the messages with their `tool_calls` and `tool`
turns, and the row's `tools` column passed as `tools=`. Here a call is put in the shape chat
templates read (`{"type": "function", "function": {"name", "arguments": <object>}}`; `arguments`
given as a JSON string is parsed, a flat `{"name", "arguments"}` call is nested), a `tools`
column given as a JSON string is parsed, and a tool result that is an object is written as JSON.
ShareGPT rows call tools the way LLaMA-Factory writes them: a `function_call` turn whose value is
the call as JSON (`{"name", "arguments"}`, or a list of them for parallel calls) and an
`observation` turn with the result, beside a `tools` column of flat function schemas
(`{"name", "description", "parameters"}`). They become the same assistant `tool_calls` turn and
`tool` turn (SHAREGPT_ROLES, `function_call`), and a flat schema is nested as
`{"type": "function", "function": ...}`, the shape chat templates and TRL expect.
After rendering, `check_rendered` makes sure the template did render them: a template without
tool support (one that ignores `tool_calls`, the `tool` role or `tools`) would otherwise train
the model on turns with the calls silently left out.
"""
from __future__ import annotations

import json
from typing import Optional

from .errors import DataError

# ShareGPT's tool turns (LLaMA-Factory's names) and the roles they are
SHAREGPT_ROLES = {"function_call": "assistant", "observation": "tool"}


def _json(value, what: str, origin: str, kind: type):
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{origin}: {what} is not valid JSON") from None
    if not isinstance(value, kind):
        raise DataError(f"{origin}: {what} must be a{'n object' if kind is dict else ' list'}, "
                        f"got {type(value).__name__}")
    return value


def tool_calls(value, origin: str, where: str) -> list[dict]:
    """A message's `tool_calls`, each as {"type": "function", "function": {"name", "arguments": {...}}}
    (plus its "id" when given)."""
    if not isinstance(value, list):
        raise DataError(f"{origin}: {where} must be a list of calls, got {type(value).__name__}")
    out = []
    for k, call in enumerate(value):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise DataError(f"{origin}: {at} must be an object with a function name and arguments")
        fn = call.get("function", call)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise DataError(f"{origin}: {at} has no function name ({at}.function.name)")
        args = fn.get("arguments", fn.get("parameters", {}))
        args = {} if args in (None, "") else _json(args, f"{at}.function.arguments", origin, dict)
        norm = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if call.get("id") is not None:
            norm["id"] = str(call["id"])
        out.append(norm)
    return out


def function_call(value, origin: str, where: str) -> list[dict]:
    """A ShareGPT `function_call` turn's value (JSON text, or already an object or list): its calls,
    as `tool_calls` normalises them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{origin}: {where} is not valid JSON (a function_call turn holds the call: "
                            '{"name": ..., "arguments": {...}})') from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(f"{origin}: {where} must be a call {{\"name\", \"arguments\"}} or a list of them, "
                        f"got {type(value).__name__ if value else 'nothing'}")
    return tool_calls(value, origin, where)


def tool_result(value, origin: str, where: str) -> str:
    """A `tool` turn's content as text (an object or list result written as JSON)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{origin}: field {where!r} must be text, got {type(value).__name__}")
    return value


def tools_column(value, origin: str, col: str) -> Optional[list]:
    """A row's `tools` column: a list of function schemas (or a JSON string of one); None when empty."""
    if value is None or value == "" or value == []:
        return None
    tools = _json(value, f"field {col!r}", origin, list)
    for k, t in enumerate(tools):
        if not isinstance(t, dict):
            raise DataError(f"{origin}: {col}[{k}] must be a function schema (an object)")
    # a flat schema (LLaMA-Factory's) nested the way chat templates read it
    return [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            if "function" not in t and "name" in t else t for t in tools]


def has_tools(messages: list[dict], tools: Optional[list]) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def describe(template) -> str:
    """Which template rendered a row, in words."""
    if template.name == "tokenizer":
        return "the tokenizer's own chat template"
    return f"the built-in {template.name} template"


NEED = ("tool-calling rows need a tools-capable chat template, one that renders tool calls, tool results "
        "and the tools column (the model's own when it supports tools, as Qwen2.5's does): use such a "
        "model's tokenizer, or drop the tool turns from these rows")


def _fn(tool: dict) -> dict:
    fn = tool.get("function", tool)
    return fn if isinstance(fn, dict) else {}


def _find(text: str, value: str, start: int) -> int:
    """The end of `value` in `text` at or after `start` (also as a JSON string, as templates that
    `tojson` a tool result write it); `start` for an empty value, -1 when absent."""
    value = value.strip()
    if not value:
        return start
    for form in (value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]):
        k = text.find(form, start)
        if k >= 0:
            return k + len(form)
    return -1


def check_rendered(text: str, messages: list[dict], tools: Optional[list], template, origin: str) -> None:
    """Raise a DataError naming the row when the rendered `text` lacks a tool call, a tool result
    or a tool schema the row has: the template cannot render tools. Calls and results are looked
    for in order, each after the message before it, so a call is not taken for its schema."""
    missing, cursor, calls = None, 0, {}
    for i, m in enumerate(messages):
        end = _find(text, m["content"], cursor) if m["role"] != "tool" else -1
        if end >= 0:
            cursor = end
        for call in m.get("tool_calls") or ():
            name = call["function"]["name"]
            calls[name] = calls.get(name, 0) + 1
            end = text.find(name, cursor)
            if end < 0:
                missing = f"the call to {name!r} in messages[{i}]"
                break
            cursor = end + len(name)
        if missing is None and m["role"] == "tool":
            end = _find(text, m["content"], cursor)
            if end < 0:
                missing = f"the tool result in messages[{i}]"
            cursor = max(cursor, end)
        if missing:
            break
    for tool in (tools or ()) if missing is None else ():
        fn = _fn(tool)
        name, about = fn.get("name"), fn.get("description")
        shown = _find(text, about, 0) >= 0 if isinstance(about, str) and about.strip() else \
            (not name or text.count(name) > calls.get(name, 0))
        if not shown:
            missing = f"the tools column (the {name!r} schema)"
            break
    if missing:
        raise DataError(f"{origin}: {describe(template)} does not render {missing}; {NEED}")
