"""core.onetemplate writers: quote/vector (the strict one-line writers the IPAM driver
prints) and template_string (escaping), each read back by parse_template."""

import pytest

from packet_provider.core.errors import InputError
from packet_provider.core.onetemplate import parse_template, quote, template_string, vector


def test_vector_one_line_reads_back() -> None:
    text = vector("AR", [("TYPE", "IP4"), ("IP", "10.0.0.1"), ("SIZE", "4")])
    assert text == 'AR = [ TYPE = "IP4", IP = "10.0.0.1", SIZE = "4" ]\n'
    [(name, value)] = parse_template(text)
    assert name == "AR" and dict(value) == {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "4"}


@pytest.mark.parametrize("bad", ['a"b', "a\\b", "a\nb", "\x00"])
def test_quote_refuses_what_it_cannot_write(bad: str) -> None:
    with pytest.raises(InputError, match="attribute NAME"):
        quote("NAME", bad)


def test_template_string_escapes() -> None:
    text = template_string([("A", 'x"y\\'), ("V", {"K": "v"})])
    assert dict((n, v if isinstance(v, str) else dict(v)) for n, v in parse_template(text)) == {
        "A": 'x"y\\', "V": {"K": "v"}}
