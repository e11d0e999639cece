"""The web UI at /ui: server-rendered pages (Jinja2, autoescaped) with one CSS file and a little
vanilla JS, all shipped in the package (`templates/`, `static/`); nothing loads from elsewhere.

Most pages call the same functions as the JSON API's handlers (`pages`); the example browser and
the dataset page's Build form ask the API's own routes, in process with the signed-in key
(`examples`, `api_client`), so every page shows what the API answers to that key. Sign-in keeps
the API key in an HttpOnly, SameSite=Strict cookie (`session`); a page asked for without it
redirects to the login page, and any other problem is shown as a page with its status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, Router
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from service.api.auth import provide_tenant, require_ui_tenant
from service.api.errors import ApiProblem
from service.ui import examples, pages, session
from service.ui.render import html

STATIC = Path(__file__).parent / "static"


def _problem_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 401 and request.method == "GET" and not request.url.path.endswith("/events"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(f"/ui/login?next={quote(target, safe='')}", status_code=303)
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    title = exc.title if isinstance(exc, ApiProblem) else "Error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    response = html("error.html", status_code=status, status=status, title=title, detail=detail, tenant=None)
    response.headers.update({k: v for k, v in headers.items() if k.lower() == "retry-after"})
    return response


def ui_router() -> Router:
    """Everything under /ui: the login page and static files open, the rest behind the key."""
    signed_in = Router(
        path="/",
        route_handlers=[
            pages.home,
            pages.datasets_page,
            pages.dataset_page,
            pages.jobs_page,
            pages.fine_tunes_page,
            pages.job_page_view,
            pages.report_page,
            pages.artifact,
            pages.events,
            pages.cancel_job,
            pages.webhooks_page,
            pages.retry,
            *examples.route_handlers,
            session.logout,
        ],
        guards=[require_ui_tenant],
        dependencies={"tenant": Provide(provide_tenant, sync_to_thread=False)},
    )
    return Router(
        path="/ui",
        route_handlers=[
            signed_in,
            session.login_page,
            session.login,
            create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False),
        ],
        exception_handlers={HTTPException: _problem_page},
        include_in_schema=False,
    )
