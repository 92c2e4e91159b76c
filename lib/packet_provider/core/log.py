"""One logging helper for every component, with secrets filtered in one place.

Lines read ``2026-11-25T10:00:00Z alias_ip INFO vm=42 action=assign ip=... duration_ms=12``.
Any value registered with :func:`register_secret` (API tokens) and anything shaped like a
token header or a PACKET_TOKEN attribute is replaced by ``***`` before a line is written,
whatever logger or handler it went through.

:mod:`logging` is imported by :func:`setup` only (about 10 ms of start-up): the VNM driver and
the error block need :func:`redact` but never log through it.
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Set

if TYPE_CHECKING:
    import logging

REDACTED = "***"
_secrets: Set[str] = set()
_TOKEN_SHAPES = (
    re.compile(r"(?i)(x-auth-token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"(?i)(PACKET_TOKEN\s*=\s*\")[^\"]*"),
    re.compile(r"(?i)(<PACKET_TOKEN>(?:<!\[CDATA\[)?)[^<\]]*"),
    re.compile(r"(?i)(\"?token\"?\s*[:=]\s*\"?)[A-Za-z0-9_\-.]{8,}"),
)


def register_secret(value: Optional[str]) -> None:
    """Make sure ``value`` never appears in a log line or an error message."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and token-shaped value masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for shape in _TOKEN_SHAPES:
        text = shape.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def record_repr(record: Any, secret_field: str, shown: str = "") -> str:
    """``Name(field=value, ...)`` of a NamedTuple record without its ``secret_field`` (a
    token or a map of them); ``shown`` takes its place when given."""
    parts = [f"{k}={v!r}" for k, v in zip(record._fields, record) if k != secret_field]
    return f"{type(record).__name__}({', '.join(parts + ([shown] if shown else []))})"


def _logging_classes() -> Dict[str, Any]:
    """RedactingFilter and _UTCFormatter, built on first use (they subclass logging's)."""
    if _classes:
        return _classes
    import logging

    class RedactingFilter(logging.Filter):
        """Masks secrets in the fully formatted message of every record."""

        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            cleaned = redact(message)
            if record.exc_info:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            record.msg, record.args = cleaned, ()
            return True

    class _UTCFormatter(logging.Formatter):
        converter = time.gmtime

        def formatTime(self, record: logging.LogRecord,  # noqa: N802
                       datefmt: Optional[str] = None) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", self.converter(record.created))

    _classes.update(RedactingFilter=RedactingFilter, _UTCFormatter=_UTCFormatter)
    return _classes


_classes: Dict[str, Any] = {}


def __getattr__(name: str) -> Any:  # PEP 562: log.RedactingFilter imports logging then
    if name in ("RedactingFilter", "_UTCFormatter"):
        return _logging_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def flush_handlers() -> None:
    """Flush every logging handler, and fsync those writing to a file (before a fast exit
    that skips logging's own shutdown). Nothing to do when logging was never imported."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    loggers = [logging.getLogger()] + [
        value for value in list(logging.Logger.manager.loggerDict.values())
        if isinstance(value, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            try:
                handler.flush()
                stream = getattr(handler, "stream", None)
                if isinstance(handler, logging.FileHandler) and stream is not None:
                    os.fsync(stream.fileno())
            except (OSError, ValueError):
                continue


def setup(component: str, log_dir: Optional[str] = None, filename: Optional[str] = None,
          stderr: bool = False) -> logging.Logger:
    """Return the logger of ``component``, writing to ``log_dir/filename`` when that directory
    is writable, and to stderr when asked (or when the file cannot be opened)."""
    import logging

    classes = _logging_classes()
    logger = logging.getLogger(f"packet_provider.{component}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = classes["_UTCFormatter"](f"%(asctime)s {component} %(levelname)s %(message)s")
    handlers = []
    if log_dir:
        path = os.path.join(log_dir, filename or f"{component}.log")
        try:
            os.makedirs(log_dir, exist_ok=True)
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
        except OSError:
            stderr = True
    if stderr or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(classes["RedactingFilter"]())
        logger.addHandler(handler)
    return logger


def fields(**values: object) -> str:
    """Format ``key=value`` pairs in a stable order, skipping None."""
    return " ".join(f"{key}={value}" for key, value in values.items() if value is not None)


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading), to 0.1 ms."""
    return round((time.perf_counter() - started) * 1000, 1)


@contextmanager
def timed() -> Iterator[dict]:
    """Measure a block: ``with timed() as t: ...`` then ``t["duration_ms"]``."""
    box = {"duration_ms": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["duration_ms"] = elapsed_ms(start)
