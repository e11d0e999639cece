"""A stub resolver for names under `.rebind.test`, answering from a JSON file the test rewrites.

`getaddrinfo_from(path)` replaces `socket.getaddrinfo` in the test process (the API, served from a
thread there, checks base URLs at registration); `python -m tests.integration.stub_dns <celery
args>` is a real Celery worker process with the same stub installed before it starts (its pool
children fork from it). Every other name and every address literal goes to the real resolver, so
Redis and loopback services are reached as usual.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUFFIX = ".rebind.test"
TABLE_ENV = "TUNESET_TEST_DNS_TABLE"
_real_getaddrinfo = socket.getaddrinfo


def getaddrinfo_from(path: Path) -> Callable[..., list[Any]]:
    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if not isinstance(name, str) or not name.rstrip(".").endswith(SUFFIX):
            return _real_getaddrinfo(host, port, *args, **kwargs)
        answers: list[str] = json.loads(path.read_text()).get(name.rstrip("."), [])
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        number = int(port or 0)
        infos: list[Any] = []
        for text in answers:
            ip = ipaddress.ip_address(text)
            if ip.version == 4:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (text, number)))
            else:
                infos.append(
                    (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (text, number, 0, 0))
                )
        return infos

    return getaddrinfo


def write_table(path: Path, table: dict[str, list[str]]) -> None:
    """Replace the answers atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    tmp.replace(path)


if __name__ == "__main__":
    socket.getaddrinfo = getaddrinfo_from(Path(os.environ[TABLE_ENV]))
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    main()
