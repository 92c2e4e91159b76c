"""The contract every executable keeps with oned: success on stdout, failure as one line in
oned's ERROR MESSAGE block on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional, TextIO

from packet_provider.core.errors import InputError, ProviderError
from packet_provider.core.log import redact

ERROR_BEGIN = "ERROR MESSAGE --8<------"
ERROR_END = "ERROR MESSAGE ------>8--"
MAX_STDIN_BYTES = 16 * 1024 * 1024


def one_line(message: str) -> str:
    """Collapse a message to one redacted line."""
    return " ".join(redact(str(message)).split()) or "unknown error"


def error_block(message: str) -> str:
    """The stderr text oned shows the user for a failed action."""
    return f"{ERROR_BEGIN}\n{one_line(message)}\n{ERROR_END}\n"


def read_stdin(stream: Optional[object] = None) -> bytes:
    """Read all of standard input as bytes, refusing absurd sizes."""
    source = stream if stream is not None else sys.stdin.buffer
    data = source.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise InputError(f"standard input is larger than {MAX_STDIN_BYTES} bytes")
    return data


def run(main: Callable[[], Optional[int]], prefix: str = "",
        stderr: Optional[TextIO] = None) -> NoReturn:
    """Run ``main`` and exit the way oned expects, whatever happens inside."""
    err = stderr or sys.stderr
    lead = f"{prefix}: " if prefix else ""
    try:
        code = main() or 0
    except ProviderError as exc:
        err.write(error_block(lead + str(exc)))
        code = exc.exit_code
    except KeyboardInterrupt:
        err.write(error_block(lead + "interrupted"))
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback to oned
        err.write(error_block(f"{lead}internal error: {type(exc).__name__}: {exc}"))
        code = 70
    err.flush()
    sys.stdout.flush()
    sys.exit(code)
