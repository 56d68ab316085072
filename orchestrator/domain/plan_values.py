"""The values a rollout plan holds: durations, percentages, rates, names, and their rules.

Each parser takes what YAML gives (a number, or text such as `10m`, `5%`, `20/s`) and answers
with the value in the unit its Python name carries, or a ValueError whose message names the
value and the forms it may take. The annotated types carry those parsers and the JSON Schema
editors see; `domain/plans.py` builds the plan's models from them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict, ValidationInfo, WithJsonSchema

from orchestrator.domain.devices import (
    MAX_METADATA_VALUE_CHARS,
    METADATA_KEY,
    RESERVED_METADATA_KEYS,
    TAG,
    metadata_key_problem,
    metadata_value_problem,
)
from orchestrator.domain.files import EXTENSIONS, FILE_NAME, FileType
from orchestrator.domain.strata import by_problem
from orchestrator.domain.yaml_locations import show_value

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DURATION_FORMS = "30s, 10m, 2h, 1h30m or 500ms (or a number of seconds)"
_N = r"\d+(?:\.\d+)?"
_NUMBER = re.compile(rf"[+-]?{_N}")
_PERCENT = re.compile(rf"({_N})\s*%")
_RATE = re.compile(rf"({_N})\s*/\s*(s|m)")
_DURATION = re.compile(rf"(?:({_N})h)?(?:({_N})m(?!s))?(?:({_N})s)?(?:({_N})ms)?")
_UNITS_S = (3600.0, 60.0, 1.0, 0.001)
_FIRMWARE_EXTENSIONS = EXTENSIONS[FileType.FIRMWARE]  # .bin, .hex, .elf

# The largest values a plan may hold. A week bounds every wait, as AWS IoT Jobs bounds its
# in-progress timeouts; the engine turns these into milliseconds and counts with them.
MAX_DURATION_S = 7 * 24 * 3600  # ack_timeout, device_timeout, waves[].bake
MAX_DEVICES = 10_000_000  # waves[].devices, policy.min_devices, policy.max_in_flight
MAX_RATE_PER_S = 10_000  # policy.rate
MAX_RETRIES = 10  # policy.retries
# Validation context that leaves the maxima out (see stored_plan): {MAXIMA: False}
MAXIMA = "maxima"
# Defaults that give way to what the plan writes (docs/plans.md, "Defaults"): a default never
# contradicts a written value; only two written values can conflict.
ACK_TIMEOUT_S = 600.0  # or device_timeout, when that is written and shorter
DEVICE_TIMEOUT_S = 1800.0  # or ack_timeout, when that is written and longer
SOAK_S = 1800.0  # policy.health.soak, or heartbeat when that is written and longer
HEARTBEAT_S = 300.0  # policy.health.heartbeat, or soak when that is written and shorter


# -- values ------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """A number, or a string holding one; None for anything else (booleans included)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # a whole number with more digits than a float holds
            return math.inf if value > 0 else -math.inf
    return None


def format_duration(seconds: float) -> str:
    """`5400` as `1h30m`, `0.5` as `500ms`: the shortest form parse_duration reads back."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms" if seconds else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{show_value(amount)}{unit}" for amount, unit in parts if amount) or "0s"


def _limit_of_duration(seconds: float) -> str:
    """`604800` as `168h (7 days)`: a form parse_duration reads, and the days for people."""
    days = f" ({seconds / 86400:g} days)" if seconds >= 86400 else ""
    return format_duration(seconds) + days


def parse_duration(value: object, maximum_s: float = math.inf) -> float:
    """Seconds in `value`: 30s, 10m, 2h, 1h30m, 500ms or a number of seconds; ValueError else.

    A number alone is seconds; more than `maximum_s` is refused.
    """
    seconds, got = _number(value), show_value(value)
    if seconds is None and isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match and any(match.groups()):
            parts = zip(match.groups(), _UNITS_S, strict=True)
            seconds = sum(float(amount) * unit for amount, unit in parts if amount)
    if seconds is None:
        raise ValueError(f"must be a duration like {DURATION_FORMS}, got {got}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"must be a duration of 0s or more, got {got}")
    if seconds > maximum_s:
        unit = "s" if got[-1].isdigit() and not isinstance(value, str) else ""  # 90 is 90s
        raise ValueError(f"must be at most {_limit_of_duration(maximum_s)}, got {got}{unit}")
    if math.isinf(seconds):
        raise ValueError(f"must be a duration of 0s or more, got {got}")
    return seconds


def _maxima_enforced(info: ValidationInfo) -> bool:
    """False while a stored plan is read back only to be shown (see stored_plan)."""
    context = info.context
    return not (isinstance(context, dict) and context.get(MAXIMA) is False)


def _duration(*, above_0: bool = False) -> Callable[[object, ValidationInfo], float]:
    def check(value: object, info: ValidationInfo) -> float:
        maximum_s = MAX_DURATION_S if _maxima_enforced(info) else math.inf
        seconds = parse_duration(value, maximum_s)
        if above_0 and seconds <= 0:
            raise ValueError(f"must be longer than 0s, got {show_value(value)}")
        return seconds

    return check


def _at_most(limit: int) -> Callable[[int, ValidationInfo], int]:
    def check(value: int, info: ValidationInfo) -> int:
        if value > limit and _maxima_enforced(info):
            raise ValueError(f"must be at most {limit}, got {show_value(value)}")
        return value

    return check


def parse_percent(value: object) -> float:
    """A wave's share of the target, 0 < p <= 100, from 10, 10.5 or "10%"; ValueError else."""
    match = _PERCENT.fullmatch(value.strip()) if isinstance(value, str) else None
    percent, got = float(match.group(1)) if match else _number(value), show_value(value)
    if percent is None:
        raise ValueError(f"must be a percentage of the target like 10 or 10%, got {got}")
    if percent <= 0:
        raise ValueError(f"must be more than 0 (a wave must reach some devices), got {got}")
    if not percent <= 100:
        raise ValueError(f"must be between 0 and 100, got {got}")
    return percent


def parse_failure_rate(value: object) -> float:
    """A fraction 0..1 from "5%" or 0.05; ValueError naming both forms otherwise."""
    forms = "a percentage like 5% or a fraction like 0.05"
    match = _PERCENT.fullmatch(value.strip()) if isinstance(value, str) else None
    rate, got = float(match.group(1)) / 100 if match else _number(value), show_value(value)
    if rate is None:
        raise ValueError(f"must be {forms}, got {got}")
    if not match and rate > 1:
        raise ValueError(f"must be {forms}, got {got} (for {rate:g} percent, write {rate:g}%)")
    if not 0 <= rate <= 1:
        raise ValueError(f"must be between 0% and 100%, got {got}")
    return rate


MIN_CONFIDENCE = 0.5  # below it a test would rather be wrong than right
MAX_CONFIDENCE = 0.999  # above it the first wave must be thousands of devices


def parse_confidence(value: object) -> float:
    """A confidence 0.5..0.999 from "95%" or 0.95; ValueError naming both forms otherwise."""
    try:
        rate = parse_failure_rate(value)
    except ValueError:
        got = show_value(value)
        raise ValueError(f"must be a confidence like 95% or 0.95, got {got}") from None
    rate = round(rate, 9)  # 99.9% reads as 0.99900…01
    if not MIN_CONFIDENCE <= rate <= MAX_CONFIDENCE:
        raise ValueError(
            f"must be between 50% and 99.9% (such as 90%, 95% or 99%), got {show_value(value)}"
        )
    return rate


def parse_rate(value: object, maximum_per_s: float = math.inf) -> float:
    """Commands per second from "20/s", "600/m" or a number per second; ValueError else."""
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    per_s = _number(value)
    if match:
        per_s = float(match.group(1)) / (60 if match.group(2) == "m" else 1)
    if per_s is None:
        forms = "20/s or 600/m (or a number per second)"
        raise ValueError(f"must be a rate like {forms}, got {show_value(value)}")
    if not per_s > 0:
        raise ValueError(f"must be more than 0, got {show_value(value)}")
    if per_s > maximum_per_s:
        limit = f"{show_value(maximum_per_s)}/s"
        raise ValueError(f"must be at most {limit}, got {show_value(value)}")
    if math.isinf(per_s):
        raise ValueError(f"must be a number of commands per second, got {show_value(value)}")
    return per_s


def _rate(value: object, info: ValidationInfo) -> float:
    return parse_rate(value, MAX_RATE_PER_S if _maxima_enforced(info) else math.inf)


def _text(limit: int, pattern: re.Pattern[str] | None = None, rule: str = "") -> Callable[..., str]:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {show_value(value)}")
        if not value or len(value) > limit or (pattern and not pattern.fullmatch(value)):
            raise ValueError(f"must be 1 to {limit} characters{rule}, got {show_value(value)}")
        return value

    return check


def _firmware_file(value: object) -> str:
    name = _text(128, FILE_NAME, " of letters, digits, '.', '_' or '-'")(value)
    if name in {".", ".."} or not name.lower().endswith(_FIRMWARE_EXTENSIONS):
        got = show_value(value)
        raise ValueError(
            f"must be an uploaded firmware file ending in .bin, .hex or .elf, got {got}"
        )
    return name


_NAME_RULE = ": a letter or digit, then letters, digits, '.', '_' or '-'"
_DURATION_TEXT = rf"^(?=\d)(?:{_N}h)?(?:{_N}m)?(?:{_N}s)?(?:{_N}ms)?$"
_PERCENT_TEXT = {"type": "string", "pattern": rf"^{_N}\s*%$"}


def _json(*forms: dict[str, Any], pattern: str = "") -> WithJsonSchema:
    """The schema editors see: the forms a value may take (a number, a string matching...)."""
    text = [{"type": "string", "pattern": pattern}] if pattern else []
    return WithJsonSchema({"anyOf": [*forms, *text]} if len(forms) + len(text) > 1 else forms[0])


def _name(limit: int) -> WithJsonSchema:
    return _json({"type": "string", "minLength": 1, "maxLength": limit, "pattern": NAME.pattern})


_TAG_RULE = " without spaces, ':', ';' or ','"
_FILE_JSON = {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,128}\.(bin|hex|elf)$"}
_ABOVE_0 = {"type": "number", "exclusiveMinimum": 0}

PlanName = Annotated[str, BeforeValidator(_text(100, NAME, _NAME_RULE)), _name(100)]
WaveName = Annotated[str, BeforeValidator(_text(64, NAME, _NAME_RULE)), _name(64)]
FirmwareFile = Annotated[str, BeforeValidator(_firmware_file), _json(_FILE_JSON)]
Text = Annotated[str, BeforeValidator(_text(128)), _json({"type": "string", "minLength": 1})]
_VERSION = re.compile(r"[^\x00-\x1f\x7f]+")  # no control character (a trailing newline)
Version = Annotated[
    str,
    BeforeValidator(_text(128, _VERSION, " without control characters such as a newline")),
    _json({"type": "string", "minLength": 1, "pattern": rf"^{_VERSION.pattern}$"}),
]
Tag = Annotated[
    str,
    BeforeValidator(_text(64, TAG, _TAG_RULE)),
    _json({"type": "string", "pattern": TAG.pattern}),
]


def _metadata_key(value: object) -> str:
    problem = metadata_key_problem(value) if isinstance(value, str) else "must be text"
    if problem is not None:
        raise ValueError(f"{problem}, got {show_value(value)}")
    return str(value)


def _metadata_value(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {show_value(value)}")
    problem = metadata_value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


MetadataKey = Annotated[
    str,
    BeforeValidator(_metadata_key),
    _json(
        {
            "type": "string",
            "pattern": METADATA_KEY.pattern,
            "not": {"enum": [*RESERVED_METADATA_KEYS, "allowed_commands"]},
        }
    ),
]
MetadataValue = Annotated[
    str,
    BeforeValidator(_metadata_value),
    _json({"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS}),
]
Count = Annotated[
    int,
    Strict(),
    Field(ge=1),
    AfterValidator(_at_most(MAX_DEVICES)),
    _json({"type": "integer", "minimum": 1, "maximum": MAX_DEVICES}),
]
Duration = Annotated[
    float,
    BeforeValidator(_duration()),
    _json({"type": "number", "minimum": 0, "maximum": MAX_DURATION_S}, pattern=_DURATION_TEXT),
]
LONGEST = _limit_of_duration(MAX_DURATION_S)
Timeout = Annotated[
    float,
    BeforeValidator(_duration(above_0=True)),
    _json({**_ABOVE_0, "maximum": MAX_DURATION_S}, pattern=_DURATION_TEXT),
]
Percent = Annotated[
    float, BeforeValidator(parse_percent), _json({**_ABOVE_0, "maximum": 100}, _PERCENT_TEXT)
]
FailureRate = Annotated[
    float,
    BeforeValidator(parse_failure_rate),
    _json({"type": "number", "minimum": 0, "maximum": 1}, _PERCENT_TEXT),
]
Confidence = Annotated[
    float,
    BeforeValidator(parse_confidence),
    _json({"type": "number", "minimum": MIN_CONFIDENCE, "maximum": MAX_CONFIDENCE}, _PERCENT_TEXT),
]
RatePerS = Annotated[
    float,
    BeforeValidator(_rate),
    _json({**_ABOVE_0, "maximum": MAX_RATE_PER_S}, pattern=rf"^{_N}/[sm]$"),
]


def _stratum(value: object) -> str:
    problem = by_problem(value)
    if problem is not None:
        raise ValueError(f"{problem}, got {show_value(value)}")
    return str(value)


Stratum = Annotated[
    str,
    BeforeValidator(_stratum),
    _json({"type": "string", "pattern": rf"^(?:model|brand|version|tag:{TAG.pattern[1:-1]})$"}),
]
