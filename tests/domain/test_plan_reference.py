"""docs/plans.md documents every key of the plan schema, with the schema's defaults and examples
that behave as the reference says."""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.domain.plans import PlanError, parse_plan, plan_json_schema

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "plans.md"
SHOWN = "docs/plans.md"
MISSING = object()  # no default in the schema
FREE_MAPPINGS = ("target.metadata",)  # mappings whose keys are the plan author's own
NO_DEFAULT = "—"  # the reference's default for a key that must be written
UNSET = "none"  # the reference's default for a key left unset
# the smallest plan; a documented default is written into it to see what it reads as
BASE_PLAN: dict[str, Any] = {
    "name": "reference",
    "firmware": {"file": "new.bin"},
    "waves": [{"percent": 100}],
    "rollback": {"file": "old.bin"},
}


@dataclass(frozen=True)
class SchemaKey:
    """A key of the plan as the JSON Schema has it."""

    required: bool
    default: object = MISSING
    maximum: object = MISSING  # of its number form, when it has one


@dataclass(frozen=True)
class DocumentedKey:
    """A row of a reference table: its Required, Default and Accepted forms cells."""

    line: int
    required: str
    default: str
    forms: str = ""


def schema_keys(schema: dict[str, Any]) -> dict[str, SchemaKey]:
    """Every key path of the schema (`policy.ack_timeout`, `waves[].bake`) and what it says."""
    defs: dict[str, Any] = schema.get("$defs", {})
    keys: dict[str, SchemaKey] = {}

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].removeprefix("#/$defs/")]
        return node

    def forms(node: dict[str, Any]) -> list[dict[str, Any]]:
        node = resolve(node)
        return [resolve(form) for form in node.get("anyOf", [])] or [node]

    def walk(node: dict[str, Any], prefix: str) -> None:
        for form in forms(node):
            if "items" in form:
                walk(form["items"], prefix + "[]")
            required = set(form.get("required", []))
            for name, child in form.get("properties", {}).items():
                path = f"{prefix}.{name}" if prefix else name
                keys[path] = SchemaKey(
                    name in required, child.get("default", MISSING), maximum_of(child)
                )
                walk(child, path)
            # a mapping whose keys are an enum (max_failure_rate_by_type): each key is a key
            for name in resolve(form.get("propertyNames", {})).get("enum", []):
                path = f"{prefix}.{name}"
                value = form.get("additionalProperties", {})
                keys[path] = SchemaKey(required=False, maximum=maximum_of(value))
                walk(value, path)

    def maximum_of(node: dict[str, Any]) -> object:
        found = [form["maximum"] for form in forms(node) if "maximum" in form]
        return found[0] if found else MISSING

    walk(schema, "")
    return keys


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def documented_keys(text: str) -> dict[str, DocumentedKey]:
    """The rows of every table whose first column is `Key`, by key path."""
    keys: dict[str, DocumentedKey] = {}
    header: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells if cells[0] == "Key" else []
            continue
        match = re.fullmatch(r"`([^`]+)`", cells[0])
        if not header or match is None:
            continue  # the |---| line, or a table of something else
        path = match.group(1)
        assert path not in keys, (
            f"{SHOWN}:{number}: {path} is documented twice (first at line {keys[path].line}); "
            "keep one row"
        )
        row = dict(zip(header, cells, strict=True))
        keys[path] = DocumentedKey(number, row["Required"], row["Default"], row["Accepted forms"])
    return keys


def _literal(default: str) -> object:
    """The YAML value a Default cell starts with: `10m`, `{}`; MISSING for — and none."""
    if default == NO_DEFAULT or default.startswith(UNSET):
        return MISSING
    match = re.match(r"`([^`]+)`", default)
    assert match, f"cannot read the default {default!r}; write —, none or a `value`"
    return yaml.safe_load(match.group(1))


def _child(node: Any, part: str) -> Any:
    """The mapping under `part` (made when missing), or the first item of a `name[]` list."""
    return node[part.removesuffix("[]")][0] if part.endswith("[]") else node.setdefault(part, {})


def _put(data: dict[str, Any], path: str, value: object) -> None:
    """Write `value` at a key path of the plan, into its first wave for `waves[]`."""
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = _child(node, part)
    node[last] = value


def _get(data: dict[str, Any], path: str) -> object:
    node: Any = data
    for part in path.split("."):
        node = _child(node, part)
    return node


def _read(plan: dict[str, Any]) -> dict[str, Any]:
    return parse_plan(yaml.safe_dump(plan)).model_dump(mode="json", by_alias=True)


@pytest.fixture(scope="module")
def schema() -> dict[str, SchemaKey]:
    return schema_keys(plan_json_schema())


@pytest.fixture(scope="module")
def reference() -> dict[str, DocumentedKey]:
    return documented_keys(REFERENCE.read_text(encoding="utf-8"))


def test_schema_walk_finds_nested_keys(schema: dict[str, SchemaKey]) -> None:
    """The walk reaches through $ref, anyOf, arrays and enum-keyed mappings."""
    assert schema["waves[].bake"] == SchemaKey(required=False, default=0.0, maximum=604800)
    assert schema["policy.max_failure_rate_by_type.failed"].maximum == 1
    assert schema["rollback.file"] == SchemaKey(required=True)
    assert "policy.max_failure_rate_by_type.wrong_version" in schema
    assert not [path for path in schema if path.startswith("target.tags[]")]


def test_every_schema_key_is_documented_and_every_documented_key_exists(
    schema: dict[str, SchemaKey], reference: dict[str, DocumentedKey]
) -> None:
    undocumented = sorted(set(schema) - set(reference))
    gone = sorted(set(reference) - set(schema))
    assert not undocumented, (
        f"keys of the plan with no row in {SHOWN}: {', '.join(undocumented)}; add a row to the "
        "table of their section"
    )
    assert not gone, (
        f"{SHOWN} documents keys the plan no longer has: {', '.join(gone)}; remove their rows"
    )


def test_required_keys_are_documented_as_required(
    schema: dict[str, SchemaKey], reference: dict[str, DocumentedKey]
) -> None:
    for path, key in schema.items():
        row = reference[path]
        documented = row.required.startswith("yes")
        assert documented == key.required, (
            f"{SHOWN}:{row.line}: {path} is {'' if key.required else 'not '}required in the "
            f"schema, but its Required cell says {row.required!r}"
        )
        assert (row.default == NO_DEFAULT) == key.required, (
            f"{SHOWN}:{row.line}: {path} has the default {row.default!r}; write — for a "
            "required key and a default (or none) for the others"
        )


def test_documented_defaults_are_the_schema_defaults(
    schema: dict[str, SchemaKey], reference: dict[str, DocumentedKey]
) -> None:
    """A documented `value` reads as the schema's default; none stands for null."""
    for path, key in schema.items():
        if key.default is MISSING:
            continue
        row = reference[path]
        literal = _literal(row.default)
        if literal is MISSING:
            # a wave's name is empty in the schema until the plan names it wave-N
            assert row.default.startswith(UNSET), f"{SHOWN}:{row.line}: {path} has a default"
            assert key.default in (None, ""), (
                f"{SHOWN}:{row.line}: {path} says none, but its default is {key.default!r}"
            )
            continue
        plan = copy.deepcopy(BASE_PLAN)
        _put(plan, path, literal)
        read = _get(_read(plan), path)
        assert read == key.default, (
            f"{SHOWN}:{row.line}: {path} documents the default {row.default!r}, which reads as "
            f"{read!r}, but the schema's default is {key.default!r}"
        )


def test_documented_defaults_change_nothing_when_written(
    reference: dict[str, DocumentedKey],
) -> None:
    """Writing a key's documented default gives the plan that leaving it out gives."""
    for path, row in reference.items():
        literal = _literal(row.default)
        if literal is MISSING:
            continue
        # the key's section written empty (policy.health), the key left out
        baseline = copy.deepcopy(BASE_PLAN)
        node: Any = baseline
        for part in path.split(".")[:-1]:
            node = _child(node, part)
        left_out = _read(baseline)
        plan = copy.deepcopy(BASE_PLAN)
        _put(plan, path, literal)
        assert _read(plan) == left_out, (
            f"{SHOWN}:{row.line}: writing {path}: {row.default} changes the plan; the default "
            "documented is not what the plan does without the key"
        )


def _at_maximum(path: str, literal: object) -> dict[str, Any]:
    """The smallest plan with `literal` at `path`, and what the rules then ask besides."""
    plan = copy.deepcopy(BASE_PLAN)
    plan["waves"] = [{} if path == "waves[].percent" else {"devices": 1}, {"percent": 100}]
    _put(plan, path, literal)
    if path == "policy.ack_timeout":  # device_timeout must be at least as long
        _put(plan, "policy.device_timeout", literal)
    return plan


def test_every_maximum_of_the_schema_is_documented_as_it_reads(
    schema: dict[str, SchemaKey], reference: dict[str, DocumentedKey]
) -> None:
    """A key with a maximum says `at most `X`` in its Accepted forms; X reads as the maximum."""
    bounded = {path: key for path, key in schema.items() if key.maximum is not MISSING}
    assert {"policy.ack_timeout", "policy.rate", "waves[].devices"} <= set(bounded)
    for path, key in bounded.items():
        row = reference[path]
        match = re.search(r"at most `([^`]+)`", row.forms)
        assert match, (
            f"{SHOWN}:{row.line}: {path} has the maximum {key.maximum!r} in the schema; say "
            "`at most `...`` in its Accepted forms"
        )
        read = _get(_read(_at_maximum(path, yaml.safe_load(match.group(1)))), path)
        assert read == key.maximum, (
            f"{SHOWN}:{row.line}: {path} documents the maximum {match.group(1)!r}, which reads "
            f"as {read!r}, but the schema's maximum is {key.maximum!r}"
        )


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_complete_example_parses_and_writes_every_key(
    schema: dict[str, SchemaKey],
) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    example = text.split("## A complete example", 1)[1]
    source = next(body for kind, body in _blocks(example) if kind == "yaml")
    parse_plan(source, f"{SHOWN} (the complete example)")
    written = {
        path
        for path in schema_keys(_shape(yaml.safe_load(source)))
        if not path.startswith(tuple(f"{free}." for free in FREE_MAPPINGS))
    }
    assert written == set(schema), f"keys the complete example leaves out: {set(schema) - written}"


def _shape(value: object) -> dict[str, Any]:
    """A schema-like view of a YAML value, so that schema_keys lists the keys it writes."""
    if isinstance(value, dict):
        properties = {str(key): _shape(child) for key, child in value.items()}
        return {"type": "object", "properties": properties}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        merged: dict[str, Any] = {}
        for item in value:
            merged.update(_shape(item)["properties"])
        return {"type": "array", "items": {"type": "object", "properties": merged}}
    return {}


def test_the_errors_shown_are_what_validate_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `$ ota validate FILE` block prints the problems of the yaml block before it, or
    (a valid plan) what `ota validate` itself prints for it."""
    blocks = _blocks(REFERENCE.read_text(encoding="utf-8"))
    shown = 0
    monkeypatch.chdir(tmp_path)
    for (_, plan), (kind, output) in itertools.pairwise(blocks):
        command = re.match(r"\$ ota validate (\S+)\n", output)
        if kind != "text" or command is None:
            continue
        if output[command.end() :].startswith("ok  "):
            (tmp_path / command.group(1)).write_text(plan, encoding="utf-8")
            ran = CliRunner().invoke(app, ["validate", command.group(1)])
            assert (ran.exit_code, ran.output) == (0, output[command.end() :]), (
                f"{SHOWN}: the output shown for `ota validate {command.group(1)}` is not what "
                f"it prints; paste the real output:\n{ran.output}"
            )
            shown += 1
            continue
        with pytest.raises(PlanError) as caught:
            parse_plan(plan, command.group(1))
        printed = str(caught.value) + "\n"
        assert printed == output[command.end() :], (
            f"{SHOWN}: the output shown for `ota validate {command.group(1)}` is not what it "
            f"prints; paste the real output:\n{printed}"
        )
        shown += 1
    assert shown >= 1, f"{SHOWN} shows no `ota validate` output"
