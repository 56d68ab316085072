"""Standard JSON (RFC 8259) in and out, whatever Python's json module allows.

Python's json reads `NaN`, `Infinity` and `-Infinity` (and `1e999`, as infinity) and writes
them back, but they are not JSON: other parsers, a device's among them, refuse the whole
document. So the service reads JSON from outside with `loads`, which refuses them naming where
they are, and writes what it publishes with `dumps`, which cannot write them. `loads` also
refuses, rather than failing on, what Python reads badly or not at all: numbers over int()'s
digit limit, a lone surrogate (`"\\ud800"`, which UTF-8 cannot carry, so Redis cannot store
it), and nesting deeper than the interpreter's recursion limit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import InvalidInput

# A \u escape of a surrogate, or a surrogate itself: the only ways to a lone one.
_SURROGATE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_FIX_NUMBER = "send a finite number, or null"


@dataclass(frozen=True, slots=True)
class _Refused:
    """Stands in, while parsing, for a value JSON cannot carry: what it is, and the fix."""

    what: str
    fix: str


def _constant(name: str) -> _Refused:
    return _Refused(f"is {name}", f"NaN and Infinity are not JSON; {_FIX_NUMBER}")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(f"is {text}", f"past the largest number JSON readers hold; {_FIX_NUMBER}")


def _int(text: str) -> int | _Refused:
    try:
        return int(text)
    except ValueError:  # over sys.get_int_max_str_digits()
        digits = len(text.lstrip("-"))
        return _Refused(f"is a number of {digits} digits", "too long to read; send it as a string")


_SURROGATE_VALUE = _Refused("is not valid Unicode", "it holds a lone surrogate; send UTF-8 text")
_SURROGATE_NAME = _Refused("is a name that is not valid Unicode", "send UTF-8 text")


def _shown(key: object) -> str:
    # A key may hold the very surrogate being refused: escaped, the message can be sent.
    return str(key).encode("utf-8", "backslashreplace").decode()


def _first_refused(value: Any) -> tuple[str, _Refused] | None:
    """(path, what) of the first value in `value` that is not standard JSON, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _Refused):
            return path, item
        if isinstance(item, float) and not math.isfinite(item):
            return path, _constant("NaN" if math.isnan(item) else "Infinity")
        if isinstance(item, str) and _SURROGATE.search(item):
            return path, _SURROGATE_VALUE
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                child_path = f"{path}.{_shown(key)}" if path else _shown(key)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return child_path, _SURROGATE_NAME
                stack.append((child_path, child))
        elif isinstance(item, list):
            for index in reversed(range(len(item))):
                stack.append((f"{path}.{index}" if path else str(index), item[index]))
    return None


def _refusal(where: str, path: str, refused: _Refused) -> InvalidInput:
    loc = f"{where}.{path}" if path else where
    subject = loc if path else f"the {where}"
    return InvalidInput(
        f"{subject} {refused.what}: {refused.fix}",
        errors=[{"loc": loc, "msg": f"{refused.what}: {refused.fix.split(';')[0]}"}],
    )


def loads(data: bytes | str, *, where: str = "body") -> Any:
    """The JSON value in `data`; InvalidInput naming what is wrong, where, and the fix.

    `where` names the document in messages and error locations (`body.data.x`).
    """
    refused: list[_Refused] = []

    def mark(found: Any) -> Any:
        if isinstance(found, _Refused):
            refused.append(found)
        return found

    try:
        value = json.loads(
            data,
            parse_constant=lambda name: mark(_constant(name)),
            parse_float=lambda text: mark(_float(text)),
            parse_int=lambda text: mark(_int(text)),
        )
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the {where} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "send JSON text",
            errors=[{"loc": where, "msg": "not JSON"}],
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"the {where} is not JSON: it is not UTF-8 text; send it encoded as UTF-8",
            errors=[{"loc": where, "msg": "not UTF-8"}],
        ) from None
    except RecursionError:
        raise InvalidInput(
            f"the {where} is not read: its arrays and objects are nested too deeply; "
            "send a flatter document",
            errors=[{"loc": where, "msg": "nested too deeply"}],
        ) from None
    surrogate = (
        _SURROGATE_TEXT.search(data) if isinstance(data, str) else _SURROGATE_BYTES.search(data)
    )
    if refused or surrogate:  # only then is the walk worth its cost
        found = _first_refused(value)
        if found is not None:
            raise _refusal(where, *found)
    return value


def dumps(value: Any, *, where: str = "payload") -> str:
    """`value` as compact standard JSON; InvalidInput naming a NaN or Infinity in it."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        found = _first_refused(value)
        raise _refusal(where, *(found or ("", _constant("NaN")))) from None
