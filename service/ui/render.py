"""Pages are Jinja2 templates shipped in the package (`service/ui/templates`), autoescaped: every
value a page shows (an example's text, a provider's message) is escaped, none is trusted markup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader
from litestar import Response
from litestar.enums import MediaType

# The UI's own pages may run only the UI's own script and style (no inline script, no CDN).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_env = Environment(
    loader=PackageLoader("service.ui", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: Any) -> str:
    """An RFC 3339 time or epoch seconds as `2026-12-02 07:15:04 UTC` (empty for none)."""
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC).isoformat()
    text = str(value).replace("T", " ")
    return text[:19] + " UTC"


def _size(n: Any) -> str:
    size = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


_env.filters["when"] = _when
_env.filters["size"] = _size


def html(template: str, status_code: int = 200, **context: Any) -> Response[str]:
    """The rendered page, with the UI's content security policy."""
    body = _env.get_template(template).render(**context)
    return Response(
        body,
        status_code=status_code,
        media_type=MediaType.HTML,
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
    )
