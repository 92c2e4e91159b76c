"""Parsing XML on the frontend with lxml: no entity resolution, no network, no DTD."""

from __future__ import annotations

from typing import Any

from lxml import etree

from packet_provider.core.errors import InputError
from packet_provider.core.hostxml import MAX_INPUT_BYTES, decode_base64


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True)


def parse(xml: bytes, what: str = "XML document") -> Any:
    """Parse ``xml`` into an lxml element, refusing any DOCTYPE."""
    if len(xml) > MAX_INPUT_BYTES:
        raise InputError(f"{what} is larger than {MAX_INPUT_BYTES} bytes")
    try:
        root = etree.fromstring(xml, _parser())
    except etree.XMLSyntaxError as err:
        raise InputError(f"{what} is not well-formed XML: {err}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise InputError("XML with a DOCTYPE or entity declaration is refused")
    return root


def parse_base64(data: bytes, what: str = "standard input") -> Any:
    return parse(decode_base64(data, what), f"the XML in {what}")
