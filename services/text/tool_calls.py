"""Reading tool calls out of a model's output as it streams (see structured.py for the forms).

A ToolCallParser takes the text of one choice piece by piece and says what is content and what
is a tool call: first the call's name (with a fresh `call_<hex>` id), then fragments of its
arguments exactly as the model wrote them, so the fragments concatenate to the arguments JSON.
The unary path feeds the whole text at once and gets the same answer.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from services.text.structured import Mode, call_begins

_HELD_BEFORE_CALL = re.compile(r"\s*(?:\[\s*)?$")  # whitespace (and an array's "[") a call may follow


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class Content:
    """Message text."""

    text: str


@dataclass
class CallStart:
    """A new tool call: its position in the choice, id and function name."""

    index: int
    id: str
    name: str


@dataclass
class CallArguments:
    """The next fragment of the arguments of call `index`."""

    index: int
    fragment: str


Event = Content | CallStart | CallArguments


@dataclass
class ParsedCall:
    """A tool call as read so far."""

    id: str
    name: str
    arguments: str = ""
    complete: bool = False


class _ValueScanner:
    """Finds where one JSON value ends, a character at a time (the value is trusted to be JSON)."""

    def __init__(self) -> None:
        self.started = False
        self.done = False
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._primitive = False

    def take(self, ch: str) -> bool:
        """Whether `ch` belongs to the value; sets `done` once the value is complete."""
        if not self.started:
            if ch.isspace():
                return False
            self.started = True
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth = 1
            else:
                self._primitive = True
            return True
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
                if self._depth == 0:
                    self.done = True
            return True
        if self._primitive:
            if ch.isspace() or ch in ",]}":
                self.done = True
                return False
            return True
        if ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 0:
                self.done = True
        return True

    def end(self) -> None:
        """The text ended: a bare number or literal is complete here."""
        if self._primitive:
            self.done = True


class ToolCallParser:
    """Splits one choice's output into content and tool calls (Mode says which forms to expect)."""

    def __init__(self, mode: Mode, tool_names: tuple[str, ...] | list[str] = (), parallel: bool = True) -> None:
        self.mode = mode
        self.tool_names = tuple(tool_names)
        self.parallel = parallel
        self.calls: list[ParsedCall] = []
        self._events: list[Event] = []
        self._held = ""  # content held back: it may turn out to precede a call
        # auto mode
        self._begins = {begin: name for name in self.tool_names for begin in call_begins(name)}
        self._pending = ""
        self._closing = False  # after a call's arguments: its closing brace
        self._ignore_rest = False
        # calls and auto mode
        self._scanner: _ValueScanner | None = None
        # calls mode
        self._state = "start"
        self._array = False
        self._token = ""  # the key or name string being read
        self._key = ""
        self._call_name: str | None = None
        self._call_args: list[str] = []
        self._call_index: int | None = None
        self._buffer = ""  # either mode: the whole output

    # -- public ---------------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        """Events for the next piece of output."""
        if text:
            if self.mode is Mode.TEXT:
                self._content(text)
            elif self.mode is Mode.AUTO:
                self._pending += text
                self._auto()
            elif self.mode is Mode.CALLS:
                for at, ch in enumerate(text):
                    self._calls_char(ch)
                    if self.mode is Mode.TEXT:  # not a call after all (possible only without a grammar)
                        self._content(text[at + 1:])
                        break
            else:
                self._buffer += text
        return self._take()

    def finish(self) -> list[Event]:
        """Events once the output is complete (held-back content, a trailing bare value, ...)."""
        if self.mode is Mode.AUTO:
            if self._scanner is not None:
                self._scanner.end()
                self._auto()
            elif not self._closing and not self._ignore_rest:
                self._content(self._pending)
                self._pending = ""
        elif self.mode is Mode.CALLS and self._scanner is not None:
            self._scanner.end()
            if self._scanner.done:
                self._value_done()
        elif self.mode is Mode.EITHER:
            self._either()
        if not self.calls and self._held:
            self._events.append(Content(self._held))
            self._held = ""
        return self._take()

    @property
    def complete(self) -> bool:
        """True when every call read so far was closed."""
        return all(c.complete for c in self.calls)

    # -- shared ---------------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        merged: list[Event] = []
        for event in events:
            last = merged[-1] if merged else None
            if isinstance(event, Content) and isinstance(last, Content):
                last.text += event.text
            elif isinstance(event, CallArguments) and isinstance(last, CallArguments) and last.index == event.index:
                last.fragment += event.fragment
            else:
                merged.append(event)
        return [e for e in merged if not (isinstance(e, Content) and not e.text)]

    def _content(self, text: str) -> None:
        """Content, holding back trailing whitespace until more text shows it is not before a call."""
        if self.calls:
            return  # text after the calls is not part of the message
        text = self._held + text
        if self.mode is Mode.TEXT:
            cut = len(text)
        else:
            held = _HELD_BEFORE_CALL.search(text)  # always matches: all of it is optional
            cut = held.start() if held else len(text)
        self._held = text[cut:]
        if cut:
            self._events.append(Content(text[:cut]))

    def _start_call(self, name: str) -> int:
        self._held = ""
        call = ParsedCall(id=new_call_id(), name=name)
        self.calls.append(call)
        index = len(self.calls) - 1
        self._events.append(CallStart(index, call.id, name))
        return index

    def _arguments(self, index: int, fragment: str) -> None:
        if fragment:
            self.calls[index].arguments += fragment
            self._events.append(CallArguments(index, fragment))

    # -- auto: text with calls begun by `{"name": ...` ------------------------------------------

    def _auto(self) -> None:
        while self._pending:
            if self._scanner is not None:
                self._auto_arguments(self._scanner)
            elif self._closing:
                stripped = self._pending.lstrip()
                if not stripped:
                    self._pending = ""
                    return
                self._closing = False
                self.calls[-1].complete = True
                self._pending = stripped[1:] if stripped[0] == "}" else stripped
                if not self.parallel:
                    self._ignore_rest = True
            elif self._ignore_rest:
                self._pending = ""
            else:
                if not self._auto_text():
                    return
        if self._scanner is not None and self._scanner.done:
            self._auto_arguments(self._scanner)

    def _auto_text(self) -> bool:
        """Consumes text up to a call's beginning; False when the rest must wait for more output."""
        found = [(self._pending.find(b), b) for b in self._begins]
        found = [(at, b) for at, b in found if at != -1]
        if found:
            at, begin = min(found, key=lambda f: (f[0], -len(f[1])))
            self._content(self._pending[:at])
            self._start_call(self._begins[begin])
            self._pending = self._pending[at + len(begin):]
            self._scanner = _ValueScanner()
            return True
        hold = 0
        for begin in self._begins:
            for k in range(min(len(begin) - 1, len(self._pending)), hold, -1):
                if self._pending.endswith(begin[:k]):
                    hold = k
                    break
        safe = len(self._pending) - hold
        self._content(self._pending[:safe])
        self._pending = self._pending[safe:]
        return False

    def _auto_arguments(self, scanner: _ValueScanner) -> None:
        fragment, consumed = [], 0
        for ch in self._pending:
            if scanner.take(ch):
                fragment.append(ch)
                consumed += 1
            elif scanner.done:
                break  # the delimiter after a bare value belongs to what follows
            else:
                consumed += 1  # whitespace before the value
            if scanner.done:
                break
        self._arguments(len(self.calls) - 1, "".join(fragment))
        self._pending = self._pending[consumed:]
        if scanner.done:
            self._scanner = None
            self._closing = True

    # -- calls: a call object or an array of them, whitespace as the model likes ----------------

    def _calls_char(self, ch: str) -> None:
        state = self._state
        if state == "value":
            self._value_char(ch)
            return
        if state in ("key", "name"):
            self._token += ch
            if ch == '"' and not _escaped_end(self._token):
                if state == "key":
                    self._key = json.loads(self._token)
                    self._state = "colon"
                else:
                    self._name_read(json.loads(self._token))
                    self._state = "object"
                self._token = ""
            return
        if ch.isspace():
            return
        if state == "start":
            if ch == "[":
                self._array, self._state = True, "items"
            elif ch == "{":
                self._open_call()
            else:
                self.mode = Mode.TEXT
                self._content(ch)
        elif state == "items":
            if ch == "{":
                self._open_call()
            elif ch == "]":
                self._state = "done"
        elif state == "object":
            if ch == '"':
                self._token, self._state = '"', "key"
            elif ch == "}":
                self._close_call()
        elif state == "colon":
            if ch == ":":
                if self._key == "name":
                    self._state = "name_value"
                else:
                    self._state, self._scanner = "value", _ValueScanner()
        elif state == "name_value":
            if ch == '"':
                self._token, self._state = '"', "name"
            else:  # a name that is not a string: read it as any value
                self._state, self._scanner = "value", _ValueScanner()
                self._value_char(ch)

    def _open_call(self) -> None:
        self._state = "object"
        self._call_name, self._call_args, self._call_index = None, [], None

    def _name_read(self, name: str) -> int:
        self._call_name = name
        self._call_index = index = self._start_call(name)
        for fragment in self._call_args:
            self._arguments(index, fragment)
        self._call_args = []
        return index

    def _value_char(self, ch: str) -> None:
        scanner = self._scanner
        assert scanner is not None, "the value state always has its scanner"
        belongs = scanner.take(ch)
        if belongs and self._key == "arguments":
            if self._call_index is None:
                self._call_args.append(ch)
            else:
                self._arguments(self._call_index, ch)
        if scanner.done:
            self._value_done()
            if not belongs:
                self._calls_char(ch)

    def _value_done(self) -> None:
        self._scanner, self._state, self._key = None, "object", ""

    def _close_call(self) -> None:
        index = self._call_index
        if index is None:
            index = self._name_read(self._call_name or "")
        call = self.calls[index]
        if not call.arguments:
            self._arguments(index, "{}")
        call.complete = True
        self._state = "items" if self._array else "done"

    # -- either: one JSON value, a call or an answer ----------------------------------------------

    def _either(self) -> None:
        text = self._buffer
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        items = value if isinstance(value, list) and value else [value]
        if all(self._is_call(item) for item in items):
            for item in items:
                index = self._start_call(item["name"])
                self._arguments(index, json.dumps(item["arguments"], ensure_ascii=False))
                self.calls[index].complete = True
        else:
            self._events.append(Content(text))

    def _is_call(self, item) -> bool:
        return (
            isinstance(item, dict)
            and set(item) == {"name", "arguments"}
            and item["name"] in self.tool_names
            and isinstance(item["arguments"], dict)
        )


def _escaped_end(token: str) -> bool:
    """True when the final quote of `token` (a JSON string being read) is escaped."""
    backslashes = len(token) - 1 - len(token[:-1].rstrip("\\"))
    return backslashes % 2 == 1
