"""The contract every executable keeps with oned: success on stdout, failure as one line in
oned's ERROR MESSAGE block on stderr with a non-zero exit, never a traceback.

Run as a process by one of the executables in ``remotes/`` (``__main__`` is a file whose
``../../lib`` holds this package), :func:`run` ends with ``os._exit`` once stdout, stderr and
every log handler are flushed (log files fsynced): the interpreter's teardown (module and
object clean-up, atexit) costs milliseconds and has nothing left to write. Called in-process
(tests, the lab), it raises SystemExit as usual."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, Optional, TextIO

from packet_provider.core.errors import InputError, ProviderError
from packet_provider.core.log import flush_handlers, redact

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
    if process_entry():
        fast_exit(code)
    sys.exit(code)


def process_entry() -> bool:
    """Whether this process was started as one of the executables next to this library
    (``<remotes>/<kind>/<name>/<executable>`` with the library at ``<remotes>/lib``)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file:
        return False
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    here = os.path.dirname(os.path.realpath(main_file))
    return os.path.realpath(os.path.join(here, "..", "..", "lib", "packet_provider")) == package


def fast_exit(code: int) -> NoReturn:
    """Flush stdout, stderr and the log handlers (fsyncing log files), then end the process
    without the interpreter's teardown. Lease files are fsynced by their writers."""
    flush_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
