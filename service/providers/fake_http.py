"""HTTP plumbing of the fake provider: requests, OpenAI-shaped error responses, multipart
parsing, and dropping a connection on purpose. Plain ASGI: the fake needs uvicorn's raw `send`
to drop a connection without a response, which a framework would hide."""

from __future__ import annotations

import asyncio
import re
import secrets
import string
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from service.providers.fake_wire import ErrorBody, ErrorEnvelope

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_encoder = msgspec.json.Encoder()
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


class ApiError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


@dataclass
class FormField:
    data: bytes
    filename: str | None = None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def int_arg(self, name: str, default: int) -> int:
        value = self.arg(name)
        try:
            return default if value is None else max(1, int(value))
        except ValueError:
            raise ApiError(400, f"Invalid '{name}': expected an integer.", param=name) from None

    def json(self) -> dict[str, Any]:
        try:
            value = msgspec.json.decode(self.body) if self.body else {}
        except msgspec.DecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(value, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return value

    def form(self) -> dict[str, FormField]:
        return parse_multipart(self.body, self.headers.get("content-type", ""))


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, _encoder.encode(value))


def error_response(error: ApiError) -> Response:
    body = ErrorEnvelope(
        ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    return Response(error.status, _encoder.encode(body), headers=dict(error.headers))


def parse_multipart(body: bytes, content_type: str) -> dict[str, FormField]:
    """multipart/form-data fields by name (the last one wins); the whole body is in memory."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not match:
        raise ApiError(400, "Expected a multipart/form-data body.")
    fields: dict[str, FormField] = {}
    for chunk in body.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
        params = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', disposition))
        if "name" in params:
            filename = params.get("filename")
            fields[params["name"]] = FormField(
                data=data.removesuffix(b"\r\n"),
                filename=urllib.parse.unquote(filename) if filename is not None else None,
            )
    return fields


async def send_response(send: Send, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"x-request-id", new_id("req_").encode()),
        *((k.encode(), v.encode()) for k, v in response.headers.items()),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def drop_connection(send: Send) -> None:
    """Close the connection without a byte of response. uvicorn's `send` is a bound method of
    its request cycle, which holds the transport; failing that, promise a body and stop short,
    which the client also sees as a broken connection."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        await asyncio.sleep(0)  # let connection_lost mark the cycle disconnected: no 500 follows
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
    raise ConnectionAbortedError("dropped by an injected fault")
