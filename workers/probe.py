"""`python -m workers.probe [--max-age S]`: exit 0 when this pod's worker wrote its heartbeat
(TUNESET_WORKER_HEARTBEAT_FILE) within S seconds, else 1 with the reason on stderr.

Kept small: it imports neither Celery nor the service's settings (Kubernetes runs it every
probe period), and reads the same environment variable the worker does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the worker's last heartbeat; None when there is none yet (or it is garbled)."""
    try:
        return time.time() - float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.probe", description=__doc__)
    parser.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    value = os.environ.get("TUNESET_WORKER_HEARTBEAT_FILE")
    if not value:
        print("TUNESET_WORKER_HEARTBEAT_FILE is not set", file=sys.stderr)
        return 1
    age = heartbeat_age(Path(value))
    if age is None:
        print(f"no heartbeat in {value} yet", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"last heartbeat {age:.0f} s ago (limit {args.max_age:g} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
