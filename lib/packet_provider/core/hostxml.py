"""Decoding and parsing oned's base64 XML with the standard library (hypervisor side).

Any DOCTYPE is rejected before the tree is built, so entity expansion and external entities
never happen. Cheap to import (binascii and expat only): ElementTree is imported by
:func:`parse` when a tree is wanted, and :func:`skim` reads a few values with expat alone,
for the hook's fast path.
"""

from __future__ import annotations

import binascii
import sys
from xml.parsers import expat

from packet_provider.core.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing and ElementTree are not imported at run time
    import xml.etree.ElementTree as ET  # noqa: S405
    from typing import Dict, List, Optional, Sequence, Tuple

MAX_INPUT_BYTES = 8 * 1024 * 1024


def _b64decode(text: bytes) -> bytes:
    if sys.version_info >= (3, 11):  # what base64.b64decode(validate=True) does, without re
        return binascii.a2b_base64(text, strict_mode=True)  # novermin
    import base64

    return base64.b64decode(text, validate=True)


def decode_base64(data: bytes, what: str = "standard input") -> bytes:
    """Decode oned's base64 text; surrounding white space (a newline or a space) is allowed."""
    text = data.strip()
    if not text:
        raise InputError(f"{what} is empty: expected base64 of an XML document")
    if len(text) > MAX_INPUT_BYTES:
        raise InputError(f"{what} is larger than {MAX_INPUT_BYTES} bytes")
    try:
        return _b64decode(b"".join(text.split()))
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def _refuse(*_args: object) -> None:
    raise InputError("XML with a DOCTYPE or entity declaration is refused")


def _scanner(namespace_separator: Optional[str] = None) -> expat.XMLParserType:
    scanner = expat.ParserCreate(namespace_separator=namespace_separator)
    scanner.StartDoctypeDeclHandler = _refuse
    scanner.EntityDeclHandler = _refuse
    scanner.ExternalEntityRefHandler = _refuse
    scanner.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    return scanner


def parse(xml: bytes, what: str = "XML document") -> ET.Element:
    """Parse ``xml`` into an Element, refusing DTDs and entities."""
    import xml.etree.ElementTree as ET  # noqa: S405 - used only after the DOCTYPE check below

    if len(xml) > MAX_INPUT_BYTES:
        raise InputError(f"{what} is larger than {MAX_INPUT_BYTES} bytes")
    try:
        _scanner().Parse(xml, True)
        return ET.fromstring(xml)  # noqa: S314 - DOCTYPE refused above
    except (expat.ExpatError, ET.ParseError) as err:
        raise InputError(f"{what} is not well-formed XML: {err}") from None


def parse_base64(data: bytes, what: str = "standard input") -> ET.Element:
    """Decode and parse oned's base64 XML in one step."""
    return parse(decode_base64(data, what), f"the XML in {what}")


def skim(xml: bytes, fields: Sequence[str], record: Sequence[str],
         record_fields: Sequence[str],
         ) -> Tuple[str, Dict[str, str], List[Dict[str, str]]]:
    """Read a few values without building a tree (expat only; DOCTYPE refused as in
    :func:`parse`): the root's tag, the text of its first child named in ``fields``, and for
    each element at path ``record`` below the root (``("TEMPLATE", "NIC_ALIAS")``) the text
    of its first child named in ``record_fields``. A text is what ElementTree's ``findtext``
    gives: the character data before the element's first child, unstripped.

    Raises InputError for what :func:`parse` refuses (the same parser and checks)."""
    if len(xml) > MAX_INPUT_BYTES:
        raise InputError(f"XML document is larger than {MAX_INPUT_BYTES} bytes")
    path = tuple(record)
    root: List[str] = []
    stack: List[str] = []
    root_values: Dict[str, str] = {}
    records: List[Dict[str, str]] = []
    texts: List[str] = []
    into: Optional[Dict[str, str]] = None  # where the text being read goes

    def flush() -> None:
        nonlocal into
        if into is not None:  # the element's text ends at its first child or its end
            into[stack[-1]] = "".join(texts)
            into = None
        texts.clear()

    def start(tag: str, _attrs: object) -> None:
        nonlocal into
        flush()
        if not stack:
            root.append(tag)
        stack.append(tag)
        where = tuple(stack[1:])
        if where == path:
            records.append({})
        elif len(stack) == 2 and tag in fields and tag not in root_values:
            into = root_values
        elif where[:-1] == path and tag in record_fields and tag not in records[-1]:
            into = records[-1]

    def end(_tag: str) -> None:
        flush()
        stack.pop()

    def data(text: str) -> None:
        if into is not None:
            texts.append(text)

    scanner = _scanner("}")  # as ElementTree: a namespaced tag is never a plain name
    scanner.StartElementHandler = start
    scanner.EndElementHandler = end
    scanner.CharacterDataHandler = data
    try:
        scanner.Parse(xml, True)
    except expat.ExpatError as err:
        raise InputError(f"XML document is not well-formed XML: {err}") from None
    return root[0], root_values, records
