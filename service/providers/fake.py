"""A fake OpenAI-compatible provider for tests: Files, Uploads, fine-tuning jobs and webhooks,
served by uvicorn on loopback, answering the official `openai` SDK
(`OpenAI(api_key=..., base_url="http://127.0.0.1:N/v1")`; `AzureOpenAI(azure_endpoint=...)`
too: `/openai/...` paths and the `api-key` header are accepted).

It checks files as the provider does (`fake_validate`, independent of service.core), moves jobs
validating_files → queued → running → succeeded|failed one step every `step_seconds`, and POSTs
signed `fine_tuning.job.*` webhooks when a webhook URL and secret are set.

Admin endpoints (no auth):
- `GET /_fake/health` → `{"ok": true}`.
- `GET /_fake/state` → every file (id, filename, bytes, purpose, status, md5, sha256, examples),
  upload (with its parts), job, fault (with its hits), request to /v1 (method, path, status:
  null when no response was sent, fault id) and webhook delivery (attempts, status), and the
  config with secrets masked.
- `POST /_fake/faults` with one fault or a list; each: `{"match": "POST /v1/files"}` ("METHOD
  /path", fnmatch globs such as `/v1/uploads/*/parts`, method `*` for any) plus
  `"status": 429|500|...` (an OpenAI-shaped error; `"retry_after": s` adds Retry-After),
  `"delay_s": s` (a slow response), `"drop": true` (the connection is closed without a
  response: the SDK sees a connection error), `"times": n` (default 1; null = always),
  `"phase": "before"|"after"` (default before: the provider never sees the request; after:
  it handled it, e.g. stored the file, and only the response is slowed, replaced or lost),
  `"message"`. `DELETE /_fake/faults` removes them all.
- `POST /_fake/config` with any FakeConfig fields (step_seconds, webhook_url, webhook_secret,
  api_key, max_file_bytes, ...) changes them; `POST /_fake/reset` forgets all files, uploads,
  jobs, faults, requests and deliveries (the config stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import uvicorn

from service.providers.fake_http import (
    ApiError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    drop_connection,
    error_response,
    json_response,
    new_id,
    send_response,
)
from service.providers.fake_state import TERMINAL, FakeState, StoredJob, paginate
from service.providers.fake_webhooks import WebhookEvent, deliver
from service.providers.fake_wire import Delivery, FakeConfig, Fault, FileDeleted, RequestLog

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_MIB = 2**20
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ensure_loopback(host: str) -> None:
    """The fake serves this machine only."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{host!r} is not a loopback address; the fake provider serves 127.0.0.1 only")


class _Disconnected(Exception):
    pass


Handler = Callable[[Request], Response]


class FakeProviderApp:
    """The ASGI app. State lives on the server's event loop; tests reach it over HTTP."""

    def __init__(self, config: FakeConfig) -> None:
        self.state = FakeState(config)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        file_, upload, job = (
            r"/v1/files/(?P<id>[^/]+)",
            r"/v1/uploads/(?P<id>[^/]+)",
            r"/v1/fine_tuning/jobs/(?P<id>[^/]+)",
        )
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (m, re.compile(p + r"\Z"), h)
            for m, p, h in (
                ("POST", r"/v1/files", self.create_file),
                ("GET", r"/v1/files", self.list_files),
                ("GET", file_, self.get_file),
                ("DELETE", file_, self.delete_file),
                ("GET", file_ + "/content", self.file_content),
                ("POST", r"/v1/uploads", self.create_upload),
                ("POST", upload + "/parts", self.add_part),
                ("POST", upload + "/complete", self.complete_upload),
                ("POST", upload + "/cancel", self.cancel_upload),
                ("POST", r"/v1/fine_tuning/jobs", self.create_job),
                ("GET", r"/v1/fine_tuning/jobs", self.list_jobs),
                ("GET", job, self.get_job),
                ("POST", job + "/cancel", self.cancel_job),
                ("GET", job + "/events", self.job_events),
                ("GET", job + "/checkpoints", self.job_checkpoints),
                ("GET", r"/_fake/health", lambda _: json_response({"ok": True})),
                ("GET", r"/_fake/state", lambda _: json_response(self.state.snapshot())),
                ("POST", r"/_fake/reset", self.admin_reset),
                ("POST", r"/_fake/faults", self.admin_add_faults),
                ("DELETE", r"/_fake/faults", self.admin_clear_faults),
                ("POST", r"/_fake/config", self.admin_config),
            )
        ]

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._ticker = asyncio.create_task(self._tick())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                tasks = [*self._tasks, *([self._ticker] if self._ticker else [])]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _tick(self) -> None:
        """Moves jobs on even when nobody asks, so terminal webhooks go out on time."""
        while True:
            await asyncio.sleep(max(0.01, min(0.1, self.state.config.step_seconds / 4)))
            self._advance()

    def _advance(self) -> None:
        for job in self.state.advance(time.time()):
            self._webhook(job)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._advance()
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        if path.startswith("/openai/"):  # Azure OpenAI's layout
            path = "/v1/" + path.removeprefix("/openai/")
        admin = path.startswith("/_fake/")
        fault = None if admin else self.state.take_fault(method, path)
        entry = RequestLog(method=method, path=path, status=None, fault=fault.id if fault else None)
        if not admin:
            self.state.requests.append(entry)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read_body(receive, self._body_limit(method, path))
        except _Disconnected:
            return
        if fault is not None and fault.phase == "before" and await self._fault(fault, entry, send):
            return
        if body is None:
            response = error_response(
                ApiError(413, "The request body is too large.", code="request_too_large")
            )
        else:
            query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
            response = self._dispatch(Request(method, path, query, headers, body), admin)
        if fault is not None and fault.phase == "after" and await self._fault(fault, entry, send):
            return
        entry.status = response.status
        await send_response(send, response)

    def _body_limit(self, method: str, path: str) -> int:
        cfg = self.state.config
        if method == "POST" and path == "/v1/files":
            return cfg.max_file_bytes + _MIB
        if method == "POST" and path.endswith("/parts"):
            return cfg.max_part_bytes + _MIB
        return 16 * _MIB

    async def _read_body(self, receive: Receive, limit: int) -> bytes | None:
        """The body, or None when it is over `limit` (read to the end and dropped, so the client
        gets the 413 rather than a broken pipe)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks) if size <= limit else None

    async def _fault(self, fault: Fault, entry: RequestLog, send: Send) -> bool:
        """Apply a fault; True when it answered (or dropped) the request itself."""
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
            self._advance()
        if fault.drop:
            await drop_connection(send)
            return True
        if fault.status is not None:
            entry.status = fault.status
            error = _fault_error(fault)
            await send_response(send, error_response(error))
            return True
        return False

    def _dispatch(self, request: Request, admin: bool) -> Response:
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            request.params = match.groupdict()
            try:
                if not admin:
                    self._authenticate(request)
                return handler(request)
            except ApiError as e:
                return error_response(e)
            except Exception:
                log.exception("fake provider: %s %s failed", request.method, request.path)
                return error_response(
                    ApiError(
                        500, "The server had an error while processing your request.", type="server_error"
                    )
                )
        status = 405 if allowed else 404
        return error_response(ApiError(status, f"Invalid URL ({request.method} {request.path})"))

    def _authenticate(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("api-key", "")
        if not key:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        expected = self.state.config.api_key
        if expected is not None and key != expected:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    # -- webhooks ------------------------------------------------------------------------------

    def _webhook(self, job: StoredJob) -> None:
        cfg = self.state.config
        if not cfg.webhook_url or not cfg.webhook_secret or job.wire.status not in TERMINAL:
            return
        event = WebhookEvent(
            id=new_id("evt_"),
            type=f"fine_tuning.job.{job.wire.status}",
            created_at=job.wire.finished_at or int(time.time()),
            data={"id": job.wire.id},
        )
        delivery = Delivery(event_id=event.id, type=event.type, job_id=job.wire.id, url=cfg.webhook_url)
        self.state.deliveries.append(delivery)
        body = _encoder.encode(event)
        task = asyncio.get_running_loop().create_task(
            deliver(
                delivery,
                body,
                cfg.webhook_secret,
                attempts=cfg.webhook_attempts,
                backoff_s=cfg.webhook_backoff_s,
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- files ---------------------------------------------------------------------------------

    def create_file(self, request: Request) -> Response:
        form = request.form()
        file, purpose = form.get("file"), form.get("purpose")
        if file is None or file.filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose is None:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
        stored = self.state.add_file(file.filename, purpose.data.decode(), file.data, time.time())
        return json_response(stored.record)

    def list_files(self, request: Request) -> Response:
        page = self.state.list_files(
            request.arg("purpose"),
            request.arg("order") or "desc",
            request.arg("after"),
            request.int_arg("limit", 10000),
        )
        return json_response(page)

    def get_file(self, request: Request) -> Response:
        return json_response(self.state.file(request.params["id"]).record)

    def delete_file(self, request: Request) -> Response:
        self.state.delete_file(request.params["id"])
        return json_response(FileDeleted(id=request.params["id"]))

    def file_content(self, request: Request) -> Response:
        return Response(200, self.state.file(request.params["id"]).content, "application/octet-stream")

    # -- uploads -------------------------------------------------------------------------------

    def create_upload(self, request: Request) -> Response:
        stored = self.state.create_upload(request.json(), time.time())
        return json_response(self.state.upload_view(stored))

    def add_part(self, request: Request) -> Response:
        data = request.form().get("data")
        if data is None:
            raise ApiError(400, "Missing required parameter: 'data'.", param="data")
        return json_response(self.state.add_part(request.params["id"], data.data, time.time()))

    def complete_upload(self, request: Request) -> Response:
        stored = self.state.complete_upload(request.params["id"], request.json(), time.time())
        return json_response(self.state.upload_view(stored))

    def cancel_upload(self, request: Request) -> Response:
        stored = self.state.cancel_upload(request.params["id"], time.time())
        return json_response(self.state.upload_view(stored))

    # -- fine-tuning ---------------------------------------------------------------------------

    def create_job(self, request: Request) -> Response:
        return json_response(self.state.create_job(request.json(), time.time()).wire)

    def list_jobs(self, request: Request) -> Response:
        metadata = {
            m.group(1): values[-1]
            for key, values in request.query.items()
            if (m := re.fullmatch(r"metadata\[(.+)\]", key))
        }
        return json_response(
            self.state.list_jobs(metadata, request.arg("after"), request.int_arg("limit", 20))
        )

    def get_job(self, request: Request) -> Response:
        return json_response(self.state.job(request.params["id"]).wire)

    def cancel_job(self, request: Request) -> Response:
        job = self.state.cancel_job(request.params["id"], time.time())
        self._webhook(job)
        return json_response(job.wire)

    def job_events(self, request: Request) -> Response:
        events = list(reversed(self.state.job(request.params["id"]).events))  # newest first
        return json_response(paginate(events, request.arg("after"), request.int_arg("limit", 20)))

    def job_checkpoints(self, request: Request) -> Response:
        checkpoints = list(reversed(self.state.job(request.params["id"]).checkpoints))
        return json_response(paginate(checkpoints, request.arg("after"), request.int_arg("limit", 10)))

    # -- admin ---------------------------------------------------------------------------------

    def admin_reset(self, _: Request) -> Response:
        for task in self._tasks:
            task.cancel()
        self.state.reset()
        return json_response({"ok": True})

    def admin_add_faults(self, request: Request) -> Response:
        try:
            given = msgspec.json.decode(request.body, type=Fault | list[Fault])
        except msgspec.ValidationError as e:
            raise ApiError(400, f"Invalid fault: {e}") from None
        faults = given if isinstance(given, list) else [given]
        return json_response([self.state.add_fault(f) for f in faults])

    def admin_clear_faults(self, _: Request) -> Response:
        self.state.faults.clear()
        return json_response({"ok": True})

    def admin_config(self, request: Request) -> Response:
        merged = {**msgspec.structs.asdict(self.state.config), **request.json()}
        try:
            self.state.config = msgspec.convert(merged, FakeConfig)
        except msgspec.ValidationError as e:
            raise ApiError(400, f"Invalid config: {e}") from None
        return json_response(self.state.snapshot()["config"])


def _fault_error(fault: Fault) -> ApiError:
    headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
    status = fault.status or 500
    if status == 429:
        return ApiError(
            429,
            fault.message or "Rate limit reached for requests (injected by the fake provider).",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if status >= 500:
        return ApiError(
            status,
            fault.message or "The server had an error while processing your request (injected).",
            type="server_error",
            headers=headers,
        )
    return ApiError(status, fault.message or f"Injected error {status}.", headers=headers)


# -- running it ------------------------------------------------------------------------------------


class FakeProvider:
    """A running fake: its URLs and the admin calls tests use (over HTTP, so thread-safe)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.base_url = url + "/v1"

    def _admin(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else _encoder.encode(payload)
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with _opener.open(request, timeout=10) as response:
            return msgspec.json.decode(response.read())

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._admin("GET", "/_fake/state")
        return state

    def add_fault(self, match: str, **fault: Any) -> dict[str, Any]:
        added: list[dict[str, Any]] = self._admin("POST", "/_fake/faults", {"match": match, **fault})
        return added[0]

    def clear_faults(self) -> None:
        self._admin("DELETE", "/_fake/faults")

    def reset(self) -> None:
        self._admin("POST", "/_fake/reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        config: dict[str, Any] = self._admin("POST", "/_fake/config", changes)
        return config


@contextlib.contextmanager
def run_fake_provider(
    host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0, **settings: Any
) -> Iterator[FakeProvider]:
    """Serve the fake in a background thread until the block ends; port 0 picks a free one.
    `settings` are FakeConfig fields (step_seconds, webhook_url, webhook_secret, api_key, ...)."""
    ensure_loopback(host)
    app = FakeProviderApp(msgspec.convert(settings, FakeConfig))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-provider-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fake provider did not start on {host}:{port}")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        provider = FakeProvider(f"http://{shown}:{bound}")
        provider._admin("GET", "/_fake/health")
        yield provider
    finally:
        server.should_exit = True
        thread.join(startup_timeout)


def serve(host: str, port: int, echo: Callable[[str], None] = print, **settings: Any) -> None:
    """Run until SIGINT or SIGTERM (the `tuneset fake-provider` command)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with run_fake_provider(host, port, **settings) as provider:
            echo(f"fake provider ready at {provider.base_url} (admin: {provider.url}/_fake/state)")
            while not stop.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
