"""Decoding and parsing oned's base64 XML with the standard library (hypervisor side).

Any DOCTYPE is rejected before the tree is built, so entity expansion and external entities
never happen.
"""

import base64
import binascii
import xml.etree.ElementTree as ET  # noqa: S405 - used only after the DOCTYPE check below
from xml.parsers import expat

from packet_provider.core.errors import InputError

MAX_INPUT_BYTES = 8 * 1024 * 1024


def decode_base64(data: bytes, what: str = "standard input") -> bytes:
    """Decode oned's base64 text; surrounding white space (a newline or a space) is allowed."""
    text = data.strip()
    if not text:
        raise InputError(f"{what} is empty: expected base64 of an XML document")
    if len(text) > MAX_INPUT_BYTES:
        raise InputError(f"{what} is larger than {MAX_INPUT_BYTES} bytes")
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def _refuse(*_args: object) -> None:
    raise InputError("XML with a DOCTYPE or entity declaration is refused")


def parse(xml: bytes, what: str = "XML document") -> ET.Element:
    """Parse ``xml`` into an Element, refusing DTDs and entities."""
    if len(xml) > MAX_INPUT_BYTES:
        raise InputError(f"{what} is larger than {MAX_INPUT_BYTES} bytes")
    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = _refuse
    scanner.EntityDeclHandler = _refuse
    scanner.ExternalEntityRefHandler = _refuse
    scanner.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        scanner.Parse(xml, True)
        return ET.fromstring(xml)  # noqa: S314 - DOCTYPE refused above
    except (expat.ExpatError, ET.ParseError) as err:
        raise InputError(f"{what} is not well-formed XML: {err}") from None


def parse_base64(data: bytes, what: str = "standard input") -> ET.Element:
    """Decode and parse oned's base64 XML in one step."""
    return parse(decode_base64(data, what), f"the XML in {what}")
