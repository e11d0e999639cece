"""Chat templates compiled and rendered the way transformers' `apply_chat_template` renders them.

The facts carried over from `transformers.utils.chat_template_utils` (5.x): an immutable sandboxed
Jinja environment with `trim_blocks` and `lstrip_blocks`, the loop-controls extension and a
`{% generation %}` block that records the character span of what it renders; `tojson` that does
not HTML-escape (`json.dumps` with `ensure_ascii=False`, and `indent`, `separators`, `sort_keys`
in that order); `raise_exception(message)`; `strftime_now(format)` (local time, so a template that
prints today's date renders differently on another day, exactly as in transformers); a `dict`
factory and a `namespace` that refuses underscore-prefixed names.

Templates are untrusted code from uploaded files, so on top of the sandbox every render runs under
a budget: a wall-clock limit, a cap on the rendered size and on the size of any string or list the
template builds. Breaking a limit raises `TemplateRaised` with a message saying which, never hangs
a worker or exhausts its memory.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.core.profiles.errors import ProfileError, TemplateRaised

RENDER_TIME_LIMIT_S = 2.0
RENDER_MAX_CHARS = 16_000_000  # characters of rendered text (a 4M-token conversation)
VALUE_MAX_ITEMS = 16_000_000  # characters of any string, or items of any list, the template builds
_CHECK_EVERY = 512  # sandbox hooks between two clock reads


@dataclass
class _Budget:
    deadline: float
    emitted: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)
    ticks: int = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % _CHECK_EVERY == 0 and time.monotonic() > self.deadline:
            raise TemplateRaised(
                f"the template ran longer than {RENDER_TIME_LIMIT_S:g} s (tuneset's limit for one render)"
            )


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "profile_render_budget", default=None
)


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple | bytes) and len(value) > VALUE_MAX_ITEMS:
        raise TemplateRaised(
            f"the template built a value of {len(value):,} items (tuneset's limit is {VALUE_MAX_ITEMS:,})"
        )
    return value


def _check_count(count: int) -> None:
    if count > VALUE_MAX_ITEMS:
        raise TemplateRaised(
            f"the template built a value of {count:,} items (tuneset's limit is {VALUE_MAX_ITEMS:,})"
        )


def _raise_exception(message: Any) -> None:
    raise jinja2.exceptions.TemplateError(str(message))


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    if isinstance(indent, int) and not 0 <= indent <= 64:
        raise TemplateRaised(f"tojson indent {indent} is outside tuneset's limit (0..64)")
    if isinstance(indent, str) and len(indent) > 64:
        raise TemplateRaised("tojson indent string is longer than tuneset's limit (64)")
    text = json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    _check_size(text)
    return text


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
            "Please rename the attribute."
        )


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing dunder names (CPython internals) and oversized values."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name, value in attrs.items():
            _check_name(name)
            _check_size(value)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        _check_size(value)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _range(*args: int) -> Iterator[int]:
    budget = _budget.get()
    for i in jinja2.sandbox.safe_range(*args):
        if budget is not None:
            budget.tick()
        yield i


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: the span of what the block renders, in characters of the
    rendered text emitted before it (how transformers' AssistantTracker measures it)."""

    tags = {"generation"}  # noqa: RUF012 - the attribute Jinja reads

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_record", []), [], [], body).set_lineno(lineno)

    def _record(self, caller: Callable[[], str]) -> str:
        rendered = caller()
        budget = _budget.get()
        if budget is not None:
            budget.spans.append((budget.emitted, budget.emitted + len(rendered)))
        return rendered


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 1024 and left not in (0, 1, -1):
            raise TemplateRaised(f"the template computes {left!r} ** {right} (tuneset's limit is ** 1024)")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _check_count(len(seq) * times)
        result = super().call_binop(context, operator, left, right)
        return _check_size(result) if operator == "+" else result

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = _budget.get()
        if budget is not None:
            budget.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _budget.get()
        if budget is not None:
            budget.tick()
        return super().getitem(obj, argument)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        if budget is not None:
            budget.tick()
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str) and name in {
            "center",
            "ljust",
            "rjust",
            "zfill",
        }:
            for a in args:
                if isinstance(a, int):
                    _check_count(a)
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def _make_environment() -> _GuardedEnvironment:
    env = _GuardedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    env.globals["range"] = _range
    return env


_ENV = _make_environment()
_CACHE_SIZE = 64
_cache: OrderedDict[str, jinja2.Template] = OrderedDict()
_cache_lock = threading.Lock()


def template_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compile_template(text: str, sha256: str | None = None) -> jinja2.Template:
    """The compiled template, once per template hash (bounded LRU); a syntax error is a ProfileError."""
    key = sha256 or template_sha256(text)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    try:
        compiled = _ENV.from_string(text)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ProfileError(
            "template_syntax", f"chat template does not parse: line {e.lineno}: {e.message}"
        ) from e
    except jinja2.exceptions.TemplateError as e:
        raise ProfileError("template_syntax", f"chat template does not parse: {e}") from e
    with _cache_lock:
        _cache[key] = compiled
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled


def template_literals(text: str) -> list[str]:
    """The literal text and string constants of a template (what it can write without being told)."""
    ast = _ENV.parse(text)
    out = [node.data for node in ast.find_all(jinja2.nodes.TemplateData)]
    out += [node.value for node in ast.find_all(jinja2.nodes.Const) if isinstance(node.value, str)]
    return out


def render_template(
    template: jinja2.Template, variables: dict[str, Any]
) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the `{% generation %}` spans; anything the template raises is TemplateRaised."""
    budget = _Budget(deadline=time.monotonic() + RENDER_TIME_LIMIT_S)
    token = _budget.set(budget)
    chunks: list[str] = []
    try:
        for chunk in template.generate(**variables):
            chunks.append(chunk)
            budget.emitted += len(chunk)
            if budget.emitted > RENDER_MAX_CHARS:
                raise TemplateRaised(
                    f"the rendered text passed {RENDER_MAX_CHARS:,} characters "
                    "(tuneset's limit for one render)"
                )
            if time.monotonic() > budget.deadline:
                raise TemplateRaised(
                    f"the template ran longer than {RENDER_TIME_LIMIT_S:g} s (tuneset's limit for one render)"
                )
    except TemplateRaised:
        raise
    except jinja2.exceptions.TemplateError as e:
        raise TemplateRaised(str(e.message if e.message is not None else e)) from e
    except RecursionError as e:
        raise TemplateRaised("the template recursed too deeply") from e
    except MemoryError as e:
        raise TemplateRaised("the template ran out of memory") from e
    except Exception as e:  # a template error is the template's, whatever Python type it surfaces as
        raise TemplateRaised(f"{type(e).__name__}: {e}") from e
    finally:
        _budget.reset(token)
    return "".join(chunks), budget.spans
