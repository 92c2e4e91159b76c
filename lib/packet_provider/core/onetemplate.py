"""oned's template syntax: ``NAME = "value"`` lines, vectors ``NAME = [ K = "v", ... ]``
(pairs separated by commas), ``#`` comments, or an XML ``<TEMPLATE>`` document; read and
written the way oned does. Used by the installer for the hook templates we ship, by the
IPAM driver for the AR and ADDRESS vectors it prints (:func:`quote`, :func:`vector`) and by
the emulators (hook and VM templates, the AR an IPAM driver prints)."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterable, List, Mapping, Sequence, Tuple, Union

from packet_provider.core.errors import InputError

TemplateValue = Union[str, "OrderedDict[str, str]"]


class TemplateError(ValueError):
    """A template that oned's parser would reject."""


# -- template syntax --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<eq>=)
  | (?P<open>\[)
  | (?P<close>\])
  | (?P<comma>,)
  | (?P<quoted>"(?:[^"\\]|\\.)*")
  | (?P<word>[^\s=\[\],"#]+)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str) -> List[Tuple[str, str, int]]:
    out = []
    pos = 0
    line = 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TemplateError(f"syntax error at line {line}: unexpected {text[pos]!r}")
        kind = match.lastgroup or ""
        value = match.group()
        if kind == "quoted":
            value = re.sub(r'\\(.)', r"\1", value[1:-1])
        if kind not in ("ws", "comment"):
            out.append((kind, value, line))
        line += match.group().count("\n")
        pos = match.end()
    return out


def parse_template(text: str) -> List[Tuple[str, TemplateValue]]:
    """Parse an oned template (``A = "v"`` lines, vectors ``V = [ K = "v", ... ]``, or an XML
    ``<TEMPLATE>`` document) into ``[(NAME, value)]``; a vector's value is an OrderedDict.
    Names are upper-cased, as oned does."""
    if text.lstrip().startswith("<"):
        return _parse_xml_template(text)
    tokens = [t for t in _tokens(text)]
    out: List[Tuple[str, TemplateValue]] = []
    i = 0

    def expect(kind: str) -> str:
        nonlocal i
        while i < len(tokens) and tokens[i][0] == "nl" and kind not in ("nl",):
            i += 1
        if i >= len(tokens):
            raise TemplateError(f"syntax error: unexpected end of template, expecting {kind}")
        got_kind, value, line = tokens[i]
        if got_kind != kind and not (kind == "value" and got_kind in ("word", "quoted")):
            raise TemplateError(
                f"syntax error at line {line}: unexpected {value!r}, expecting {kind}")
        i += 1
        return value

    while i < len(tokens):
        if tokens[i][0] == "nl":
            i += 1
            continue
        name = expect("word").upper()
        expect("eq")
        if i < len(tokens) and tokens[i][0] == "open":
            i += 1
            vector: OrderedDict[str, str] = OrderedDict()
            while True:  # pairs separated by commas; newlines anywhere
                while i < len(tokens) and tokens[i][0] == "nl":
                    i += 1
                if i < len(tokens) and tokens[i][0] == "close":
                    i += 1
                    break
                key = expect("word").upper()
                expect("eq")
                vector[key] = expect("value")
                while i < len(tokens) and tokens[i][0] == "nl":
                    i += 1
                if i < len(tokens) and tokens[i][0] == "comma":
                    i += 1
                    continue
                expect("close")
                break
            out.append((name, vector))
        elif i >= len(tokens) or tokens[i][0] == "nl":
            out.append((name, ""))  # NAME = (nothing on that line)
        else:
            out.append((name, expect("value")))
            if i < len(tokens) and tokens[i][0] != "nl":
                raise TemplateError(f"syntax error at line {tokens[i][2]}: unexpected "
                                    f"{tokens[i][1]!r} after the value of {name}")
    return out


def _parse_xml_template(text: str) -> List[Tuple[str, TemplateValue]]:
    from packet_provider.core import hostxml

    try:
        root = hostxml.parse(text.encode("utf-8"))
    except InputError as exc:
        raise TemplateError(f"malformed XML template: {exc}") from None
    out: List[Tuple[str, TemplateValue]] = []
    for child in root:
        if len(child):
            out.append((child.tag.upper(),
                        OrderedDict((c.tag.upper(), (c.text or "").strip()) for c in child)))
        else:
            out.append((child.tag.upper(), (child.text or "").strip()))
    return out


def quote(name: str, value: str) -> str:
    """``value`` in double quotes, for a template oned parses; a value with a quote, a
    backslash or a control character is refused (InputError naming attribute ``name``)."""
    if any(c in value for c in '"\\') or any(ord(c) < 32 for c in value):
        raise InputError(f"attribute {name}: quotes, backslashes and control characters "
                         "are not supported in address range values")
    return f'"{value}"'


def vector(name: str, attrs: Sequence[Tuple[str, str]]) -> str:
    """``NAME = [ A = "x", B = "y" ]`` on one line (values through :func:`quote`), as oned
    parses it; the line ends with a newline."""
    body = ", ".join(f"{key} = {quote(key, value)}" for key, value in attrs)
    return f"{name} = [ {body} ]\n"


def template_string(attrs: Iterable[Tuple[str, TemplateValue]]) -> str:
    """Render ``[(NAME, value)]`` in oned's template syntax (quotes and backslashes escaped)."""

    def escaped(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for name, value in attrs:
        if isinstance(value, Mapping):
            inner = ",\n  ".join(f"{k} = {escaped(v)}" for k, v in value.items())
            lines.append(f"{name} = [\n  {inner} ]")
        else:
            lines.append(f"{name} = {escaped(value)}")
    return "\n".join(lines) + "\n"
