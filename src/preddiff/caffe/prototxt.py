"""Protocol-buffer *text format* (``.prototxt``): a schema-free parser and a formatter.

Scope
-----
Caffe's net definitions are ``caffe.NetParameter`` messages in the protobuf text format
(https://protobuf.dev/reference/protobuf/textformat-spec/). Without the schema a value's type
cannot be known, so the parser keeps what the text says:

* a message is a ``dict`` mapping each field name to the **list** of its values, in order
  (every field may repeat; a field given once has a one-element list);
* a value is an ``int``, a ``float``, a ``str`` (a quoted string), an :class:`Ident` (a bare
  identifier: an enum value such as ``MAX`` or ``CONVOLUTION``, or ``true``/``false``), or a
  nested message ``dict``.

Supported syntax: ``name: value``, ``name { ... }``, ``name: { ... }``, ``name < ... >``,
the list shorthand ``name: [v1, v2]``, optional ``,``/``;`` after a field, ``#`` comments,
single- or double-quoted strings with C escapes, adjacent strings concatenated, decimal,
hexadecimal, octal and floating-point numbers (``1e-4``, ``.5``, ``2.f``, ``inf``, ``nan``).
A syntax error raises :class:`~preddiff.errors.CaffeFormatError` naming the line and column.
"""
from __future__ import annotations

import math
import re

from ..errors import CaffeFormatError

__all__ = ["Ident", "parse", "format_message", "plain"]


class Ident(str):
    """A bare identifier in the text (an enum value, ``true``/``false``), kept distinct from a
    quoted string so that :func:`format_message` writes it back unquoted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Ident({str.__repr__(self)})"


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+|\#[^\n]*) |
    (?P<newline>\n) |
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
    (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)
               (?![A-Za-z0-9_])) |
    (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*) |
    (?P<punct>[{}<>:\[\],;]) |
    (?P<bad>.)
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}
_CLOSE = {"{": "}", "<": ">"}


class _Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind, text, line, col):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def describe(self) -> str:
        return "the end of the file" if self.kind == "eof" else repr(self.text)


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens = []
    line, line_start = 1, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        col = match.start() - line_start + 1
        if kind == "newline":
            line, line_start = line + 1, match.end()
        elif kind == "bad":
            raise _error(source, line, col, f"unexpected character {match.group()!r}")
        elif kind != "space":
            tokens.append(_Token(kind, match.group(), line, col))
    tokens.append(_Token("eof", "", line, len(text) - line_start + 1))
    return tokens


def _error(source: str, line: int, col: int, message: str) -> CaffeFormatError:
    return CaffeFormatError(f"{source}: line {line}, column {col}: {message}")


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xX":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]).group()
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        elif nxt.isdigit():
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        else:
            raise ValueError(f"unknown escape \\{nxt}")
    return "".join(out)


def _number(text: str):
    body = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", body):
        return int(body, 16)
    if re.fullmatch(r"[-+]?0[0-7]+", body):
        return int(body, 8)
    if re.fullmatch(r"[-+]?\d+", body):
        return int(body)
    return float(body)


#: Deepest nesting of messages read (protobuf's own parsers stop at 100 by default); deeper
#: text is refused instead of exhausting Python's recursion limit.
MAX_DEPTH = 100


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.tokens = _tokenize(text, source)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: _Token, message: str) -> CaffeFormatError:
        return _error(self.source, token.line, token.col, message)

    def message(self, close: str | None, opened: _Token | None = None) -> dict:
        if self.depth > MAX_DEPTH:
            raise self.fail(opened, f"messages nested more than {MAX_DEPTH} levels deep; a "
                            "Caffe net is a few levels deep (protobuf stops at 100)")
        self.depth += 1
        try:
            return self._fields(close, opened)
        finally:
            self.depth -= 1

    def _fields(self, close: str | None, opened: _Token | None) -> dict:
        fields: dict = {}
        while True:
            token = self.peek()
            if token.kind == "eof":
                if close is None:
                    return fields
                raise self.fail(
                    token, f"missing {close!r} to close the {opened.text!r} opened at line "
                    f"{opened.line}"
                )
            if token.kind == "punct" and token.text == close:
                self.next()
                return fields
            if token.kind != "ident" or token.text.startswith("-"):
                raise self.fail(token, f"expected a field name, found {token.describe()}")
            self.next()
            fields.setdefault(token.text, []).extend(self.field_values(token))
            sep = self.peek()
            if sep.kind == "punct" and sep.text in ",;":
                self.next()

    def field_values(self, name: _Token) -> list:
        token = self.next()
        if token.kind == "punct" and token.text in _CLOSE:
            return [self.message(_CLOSE[token.text], token)]
        if not (token.kind == "punct" and token.text == ":"):
            raise self.fail(
                token, f"expected ':' or '{{' after field {name.text!r}, found "
                f"{token.describe()}"
            )
        token = self.peek()
        if token.kind == "punct" and token.text in _CLOSE:
            self.next()
            return [self.message(_CLOSE[token.text], token)]
        if token.kind == "punct" and token.text == "[":
            return self.list_values(name)
        return [self.scalar(name)]

    def list_values(self, name: _Token) -> list:
        self.next()  # '['
        values = []
        if self.peek().kind == "punct" and self.peek().text == "]":
            self.next()
            return values
        while True:
            token = self.peek()
            if token.kind == "punct" and token.text in _CLOSE:
                self.next()
                values.append(self.message(_CLOSE[token.text], token))
            else:
                values.append(self.scalar(name))
            token = self.next()
            if token.kind == "punct" and token.text == "]":
                return values
            if not (token.kind == "punct" and token.text == ","):
                raise self.fail(token, f"expected ',' or ']' in the list of {name.text!r}, "
                                       f"found {token.describe()}")

    def scalar(self, name: _Token):
        token = self.next()
        if token.kind == "string":
            parts = [token]
            while self.peek().kind == "string":  # adjacent strings concatenate
                parts.append(self.next())
            try:
                return "".join(_unescape(t.text[1:-1]) for t in parts)
            except (ValueError, AttributeError) as exc:
                raise self.fail(token, f"bad escape in string: {exc}") from None
        if token.kind == "number":
            return _number(token.text)
        if token.kind == "ident":
            lowered = token.text.lower().lstrip("-")
            if lowered in ("inf", "infinity", "nan"):
                value = math.inf if lowered.startswith("inf") else math.nan
                return -value if token.text.startswith("-") else value
            if token.text.startswith("-"):
                raise self.fail(token, f"expected a value for {name.text!r}, found "
                                       f"{token.describe()}")
            return Ident(token.text)
        raise self.fail(token, f"expected a value for field {name.text!r}, found "
                               f"{token.describe()}")


def parse(text: str, source: str = "<prototxt>") -> dict:
    """Parse protobuf text format into nested dicts of value lists.

    Parameters
    ----------
    text : str
        The text of a message (e.g. the contents of a ``deploy.prototxt``).
    source : str
        Name used in error messages (the file path).

    Returns
    -------
    dict
        Field name → list of values (see the module docstring).

    Raises
    ------
    CaffeFormatError
        On a syntax error; the message names ``source``, the line and the column.

    Examples
    --------
    >>> parse('name: "x" layer { type: "ReLU" top: "a" top: "b" }')
    {'name': ['x'], 'layer': [{'type': ['ReLU'], 'top': ['a', 'b']}]}
    """
    return _Parser(text, source).message(None)


def _format_scalar(value) -> str:
    if isinstance(value, Ident):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def format_message(message: dict, indent: int = 0) -> str:
    """Write a message of the form returned by :func:`parse` back as text format.

    ``parse(format_message(m)) == m`` for every message ``parse`` can return (NaN aside).
    """
    pad = "  " * indent
    lines = []
    for name, values in message.items():
        for value in values:
            if isinstance(value, dict):
                lines.append(f"{pad}{name} {{")
                body = format_message(value, indent + 1)
                if body:
                    lines.append(body.rstrip("\n"))
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{name}: {_format_scalar(value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def plain(message: dict) -> dict:
    """A friendlier view of a parsed message: a field given once maps to its value, a repeated
    field to the list of its values; nested messages likewise."""
    out = {}
    for name, values in message.items():
        values = [plain(v) if isinstance(v, dict) else v for v in values]
        out[name] = values[0] if len(values) == 1 else values
    return out
