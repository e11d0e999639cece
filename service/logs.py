"""Structured logs: with TUNESET_LOG_FORMAT=json every line is one JSON object carrying the
`request_id`, `job_id` and `tenant` it happened for, and no secret.

python-json-logger, not structlog: it is a formatter for the standard `logging` that this code,
uvicorn, Celery, httpx and the SDKs already log through, so every line (ours and theirs) comes
out the same way without changing a call site; structlog would need its own loggers or a
bridge. The context rides in contextvars: the API middleware sets the request id (and the job
id of /v1/jobs/{job_id} routes), the auth guard the tenant, a worker each step's job and tenant.

Masking happens on the finished line, so it covers the message, its arguments, extra fields
and tracebacks alike: API keys (`ts_…`), provider keys (`sk-…`), webhook secrets (`whsec_…`),
bearer tokens and `key=value` pairs whose key names a secret keep a short prefix only.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

FIELDS = ("request_id", "job_id", "tenant")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"tuneset_{name}", default=None) for name in FIELDS
}

_SECRETS = re.compile(
    r"(?P<keep>\b(?:sk|rk)-(?:proj-|svcacct-|admin-)?|\bwhsec_|\bts_|\b[Bb]earer\s+)[A-Za-z0-9+/=_\-.]{4,}"
    r"|(?P<name>(?i:api[_-]?key|secret|password|token|access[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;}]{4,}"
)


def mask(text: str) -> str:
    """`sk-abcdef…` → `sk-***`: the prefix says what it was, nothing says what it is."""

    def hide(match: re.Match[str]) -> str:
        return (match.group("keep") or match.group("name")) + "***"

    return _SECRETS.sub(hide, text)


def bind(**fields: str | None) -> None:
    """Set context fields (request_id, job_id, tenant) for what this task or thread logs next."""
    for name, value in fields.items():
        _context[name].set(value)


def context() -> dict[str, str]:
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    tokens = [(_context[name], _context[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound context on every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class MaskedJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def json_formatter() -> MaskedJsonFormatter:
    return MaskedJsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's copy of the message with ANSI colours
    )


def use_json(handler: logging.Handler) -> None:
    handler.setFormatter(json_formatter())
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """JSON lines on stderr: the root logger's only handler, which the library loggers that had
    their own (uvicorn's, Litestar's) propagate to. Text (the default) leaves the handlers as
    they are."""
    if log_format != "json":
        # uvicorn already prints a line per request in text mode; ours would repeat it
        logging.getLogger("tuneset.access").setLevel(logging.WARNING)
        return
    root = logging.getLogger()
    if not any(isinstance(h.formatter, MaskedJsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        use_json(handler)
        root.handlers = [handler]
    root.setLevel(min(root.level or level, level))
    for name in ("uvicorn", "uvicorn.error", "litestar"):
        library = logging.getLogger(name)
        library.handlers = []
        library.propagate = True
    # the middleware logs each request with its id; uvicorn's line would have none
    logging.getLogger("uvicorn.access").disabled = True


def celery_logger_setup(logger: logging.Logger | None = None, **_: Any) -> None:
    """For Celery's after_setup_logger / after_setup_task_logger signals: its handlers write JSON."""
    if logger is None:
        return
    for handler in logger.handlers:
        use_json(handler)
