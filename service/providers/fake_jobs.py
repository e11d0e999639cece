"""The fake provider's rules for fine-tuning job parameters (suffix, seed, metadata, method and
hyperparameters), with OpenAI's error codes, and the numbers a simulated run reports."""

from __future__ import annotations

import math
from typing import Any, Literal

from service.providers.fake_http import ApiError
from service.providers.fake_validate import FORMAT_NAMES
from service.providers.fake_wire import JobError, Method, MethodBody

MAX_SEED = 2147483647


def default_epochs(n: int) -> int:
    """The cookbook's heuristic, which a real 10-example job matched."""
    if n <= 0:
        return 1
    if n * 3 < 100:
        return min(25, 100 // n)
    if n * 3 > 25000:
        return max(1, 25000 // n)
    return 3


def check_suffix(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "Invalid 'suffix': expected a string.", param="suffix", code="invalid_type")
    if not value:
        raise ApiError(
            400,
            "Invalid 'suffix': string too short. Expected a string with minimum length 1, "
            "but got an empty string instead.",
            param="suffix",
            code="string_below_min_length",
        )
    if len(value) > 64:
        raise ApiError(
            400,
            "Invalid 'suffix': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(value)} instead.",
            param="suffix",
            code="string_above_max_length",
        )
    return value


def check_metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(
            400, "Invalid 'metadata': expected an object of strings.", param="metadata", code="invalid_type"
        )
    if len(value) > 16:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many properties. Expected at most 16, but got {len(value)} instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for k, v in value.items():
        if len(k) > 64 or len(v) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata': key {k!r} is longer than 64 or its value longer than 512 characters.",
                param="metadata",
                code="invalid_value",
            )
    return dict(value)


_HYPER_RULES: dict[str, tuple[bool, float, float, bool]] = {
    # name: (integer, low, high, low is exclusive)
    "n_epochs": (True, 1, 50, False),
    "batch_size": (True, 1, 256, False),
    "learning_rate_multiplier": (False, 0, math.inf, True),
    "beta": (False, 0, 2, True),
}


def parse_method(body: dict[str, Any]) -> tuple[Literal["supervised", "dpo"], dict[str, Any]]:
    raw = body.get("method")
    if raw is None:  # the deprecated top-level hyperparameters mean supervised
        raw = {"type": "supervised", "supervised": {"hyperparameters": body.get("hyperparameters") or {}}}
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("supervised", "dpo"):
        raise ApiError(
            400,
            f"Invalid 'method.type': {kind!r}. This provider supports 'supervised' and 'dpo'.",
            param="method.type",
            code="invalid_value",
        )
    section = raw.get(kind) or {}
    given = (section.get("hyperparameters") or {}) if isinstance(section, dict) else None
    if not isinstance(given, dict):
        raise ApiError(400, f"Invalid 'method.{kind}': expected an object.", param=f"method.{kind}")
    allowed = ["n_epochs", "batch_size", "learning_rate_multiplier"] + (["beta"] if kind == "dpo" else [])
    hyper: dict[str, Any] = {}
    for name in given:
        if name not in allowed:
            raise ApiError(
                400,
                f"Unknown parameter: 'method.{kind}.hyperparameters.{name}'.",
                param=f"method.{kind}.hyperparameters.{name}",
                code="unknown_parameter",
            )
    for name in allowed:
        value = given.get(name, "auto")
        integer, low, high, exclusive = _HYPER_RULES[name]
        ok = value == "auto" or (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (isinstance(value, int) or not integer)
            and (value > low if exclusive else value >= low)
            and value <= high
        )
        if not ok:
            bounds = f"{'(' if exclusive else '['}{low:g}, {high:g}]"
            raise ApiError(
                400,
                f"Invalid 'method.{kind}.hyperparameters.{name}': {value!r}; expected 'auto' or "
                f"{'an integer' if integer else 'a number'} in {bounds}.",
                param=f"method.{kind}.hyperparameters.{name}",
                code="invalid_value",
            )
        hyper[name] = value
    return kind, hyper


def method_wire(kind: Literal["supervised", "dpo"], hyper: dict[str, Any]) -> Method:
    body = MethodBody(hyperparameters=dict(hyper))
    return Method(type=kind, supervised=body) if kind == "supervised" else Method(type=kind, dpo=body)


def format_failure(kind: str, file_id: str, found: str | None, param: str) -> JobError | None:
    """The job-level check: the file's format must fit the method."""
    wanted = {"supervised": ("chat", "completion"), "dpo": ("preference",)}[kind]
    if found in wanted:
        return None
    needs = "dpo" if found == "preference" else "supervised"
    return JobError(
        code=f"invalid_{param}",
        param=param,
        message=f"Input file {file_id} is in the {FORMAT_NAMES.get(found or '', 'unknown')} format, "
        f"but the specified fine-tuning job is not using '{needs}' as the training method "
        f"(provided method={kind}).",
    )


def epoch_loss(epoch: int) -> float:
    """A made-up, falling training loss."""
    return round(2.0 / (1 + epoch), 4)


def results_csv(epochs: int, steps_per_epoch: int) -> str:
    """The result file a succeeded job leaves (the provider's step_metrics.csv, abridged)."""
    rows = ["step,train_loss,train_accuracy"]
    for e in range(1, epochs + 1):
        loss = epoch_loss(e)
        rows.append(f"{e * steps_per_epoch},{loss},{round(1 - loss / 3, 4)}")
    return "\n".join(rows) + "\n"
