"""Read YAML into plain values, remember where each was written, and place errors there.

PyYAML's `safe_load` forgets positions and keeps the last of two duplicate keys; located
errors need both, so this composes the document into nodes and builds the values from them.
`LocatedYaml.explain` then turns a pydantic ValidationError into sentences at those positions.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]
# a cross-field problem found by a model validator: where (relative to the model), and what;
# and the other value it conflicts with, if any, which the detail names as OTHER
Rule = tuple[Path, str] | tuple[Path, str, Path]
RULE_ERROR = "located_rule"
OTHER = "{other}"  # in a rule's detail: the other value's name, and where it was written

MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
# LibYAML, when PyYAML was built with it, composes a document several times faster than
# PyYAML's own Python parser, with the same marks (line and column in characters); a plan
# naming 150,000 devices takes about a second instead of five.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SHOWN_DIGITS = 30  # a longer whole number is shown by its length


def render_path(path: Path) -> str:
    """`("waves", 1, "percent")` as `waves[1].percent`; the empty path as ``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def show_value(value: object) -> str:
    """`value` as a YAML author would write it, short."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int) and abs(value) >= 10**SHOWN_DIGITS:
        return _long_number(value)
    text = repr(value) if isinstance(value, str | int | float) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _long_number(value: int) -> str:
    """`a number of 482 digits`: such a number is never worth printing, and past
    sys.get_int_max_str_digits() Python refuses to."""
    sign = "a negative" if value < 0 else "a"
    try:
        return f"{sign} number of {len(str(abs(value)))} digits"
    except ValueError:
        return f"{sign} number of more than {sys.get_int_max_str_digits()} digits"


def rule_error(rules: list[Rule]) -> PydanticCustomError:
    """Raise this from a model validator: `explain` places each rule at its own path.

    The detail follows the path's name: `((\"device_timeout\",), "must be at least ...")`.
    A rule between two written values names the other as OTHER in its detail and gives its
    path third: `((\"device_timeout\",), f"must be at least {OTHER}", (\"ack_timeout\",))`.
    """
    text = "; ".join(
        f"{render_path(rule[0]) or 'this'} {_cite(rule, render_path(_other(rule)))}"
        for rule in rules
    )
    return PydanticCustomError(RULE_ERROR, "{text}", {"text": text, "rules": rules})


def _other(rule: Rule) -> Path:
    return rule[2] if len(rule) == 3 else ()


def _cite(rule: Rule, other: str) -> str:
    """The rule's detail with OTHER replaced by `other`."""
    return rule[1].replace(OTHER, other)


def close_match(word: str, choices: list[str]) -> str | None:
    """The choice `word` was probably meant to be (`bake_time` → `bake`), if any."""
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(word: str, choices: list[str]) -> str:
    """`; did you mean 'bake'?`, or the list of choices when none is close."""
    close = close_match(word, choices)
    if close is not None:
        return f"; did you mean {close!r}?"
    return f"; use one of {', '.join(choices)}" if choices else ""


@dataclass(frozen=True)
class Position:
    """A place in the text, both numbers 1-based."""

    line: int
    column: int


START = Position(1, 1)


@dataclass(frozen=True)
class YamlIssue:
    """Something wrong in otherwise readable YAML (a duplicate key, a merge key)."""

    position: Position
    path: Path
    message: str


class YamlSyntaxError(ValueError):
    """The text is not YAML; `position` is where the reader gave up."""

    def __init__(self, message: str, position: Position) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass
class LocatedYaml:
    """The document's value and where each part of it was written."""

    data: object
    root: str = "the document"
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    # plain (unquoted) scalars that YAML read as something other than text: numbers, booleans,
    # dates; callers that want text (a version `2.10`) take these as written
    plain: dict[Path, str] = field(default_factory=dict)
    issues: list[YamlIssue] = field(default_factory=list)

    def locate(self, path: Path, *, key: bool = False) -> Position:
        """Where `path` was written, or its closest written ancestor; its key if `key`."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return START

    def keep_as_written(self, patterns: Iterable[tuple[str, ...]]) -> None:
        """Put back the text of plain scalars YAML typed (`2.10` read as 2.1) at these paths.

        A pattern is a path whose `*` parts stand for any list index or mapping key.
        """
        for path, text in self.plain.items():
            if any(_fits(path, pattern) for pattern in patterns):
                parent = self.data
                for part in path[:-1]:
                    parent = _child(parent, part)
                if isinstance(parent, dict) and path[-1] in parent:
                    parent[path[-1]] = text
                elif isinstance(parent, list) and _child(parent, path[-1]) is not None:
                    parent[path[-1]] = text  # type: ignore[index]

    def explain(
        self, exc: ValidationError, keys_of: Callable[[Path], list[str]]
    ) -> list[YamlIssue]:
        """Each of pydantic's errors as a sentence at the closest written node.

        `keys_of(path)` lists the keys the mapping at `path` accepts, for suggestions.
        """
        issues: list[YamlIssue] = []
        for error in exc.errors(include_url=False):
            issues += self._explain(error, keys_of)
        return issues

    def _explain(
        self, error: ErrorDetails, keys_of: Callable[[Path], list[str]]
    ) -> list[YamlIssue]:
        loc: Path = tuple(error["loc"])
        kind = error["type"]
        if kind == RULE_ERROR:
            rules: list[Rule] = error.get("ctx", {}).get("rules", [])
            issues = []
            for rule in rules:
                path = (*loc, *rule[0])
                detail = _cite(rule, self._written((*loc, *_other(rule))))
                issues.append(YamlIssue(self.locate(path), path, f"{self._name(path)} {detail}"))
            return issues
        if kind == "missing":
            message = f"{self._name(loc[:-1])} is missing the required key {loc[-1]!r}"
            return [YamlIssue(self.locate(loc[:-1]), loc, message)]
        if kind == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            message = f"unknown key {key!r} in {self._name(parent)}{suggest(key, keys_of(parent))}"
            return [YamlIssue(self.locate(loc, key=True), loc, message)]
        if loc and loc[-1] == "[key]" and kind == "value_error":  # a free key broke its rule
            key, parent = str(error.get("input")), loc[:-2]
            message = f"{self._name(parent)} key {key!r} {_describe(error, keys_of)}"
            return [YamlIssue(self.locate(loc[:-1], key=True), loc[:-1], message)]
        if loc and loc[-1] == "[key]":  # a dict's key failed its own type (an enum)
            key, parent = str(error.get("input")), loc[:-2]
            choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
            message = f"unknown key {key!r} in {self._name(parent)}{suggest(key, choices)}"
            return [YamlIssue(self.locate(loc[:-1], key=True), loc[:-1], message)]
        return [YamlIssue(self.locate(loc), loc, f"{self._name(loc)} {_describe(error, keys_of)}")]

    def _name(self, path: Path) -> str:
        return render_path(path) or self.root

    def _written(self, path: Path) -> str:
        """`policy.ack_timeout (line 11, column 16)`: a value's name and where it was written
        (the name alone for data read from storage, which has no text)."""
        at = self.values.get(path)
        where = f" (line {at.line}, column {at.column})" if at is not None else ""
        return self._name(path) + where


def _describe(error: ErrorDetails, keys_of: Callable[[Path], list[str]]) -> str:
    """What is wrong with the value at error['loc'], as the end of a sentence."""
    kind, ctx, got = error["type"], error.get("ctx", {}), show_value(error.get("input"))
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"must be a whole number, got {got}"
    if kind in {"float_type", "float_parsing"}:
        return f"must be a number, got {got}"
    if kind in {"string_type", "str_type"}:
        return f"must be text, got {got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {got}"
    if kind in {"literal_error", "enum"}:
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = close_match(error["input"], choices) if isinstance(error["input"], str) else None
        hint = f"; did you mean {close!r}?" if close else ""
        return f"must be {ctx.get('expected')}, got {got}{hint}"
    if kind == "list_type":
        return f"must be a list, got {got}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        keys = ", ".join(keys_of(tuple(error["loc"])))
        return f"must be a mapping{' with keys ' + keys if keys else ''}, got {got}"
    if kind in {"too_short", "too_long"}:
        least, limit = (
            ("least", ctx.get("min_length"))
            if kind == "too_short"
            else ("most", ctx.get("max_length"))
        )
        items = "item" if limit == 1 else "items"
        actual = ctx.get("actual_length")
        if actual is None and isinstance(error.get("input"), dict | list):  # pydantic's dicts
            actual = len(error["input"])
        return f"must have at {least} {limit} {items}, got {actual}"
    if kind == "recursion_loop":
        return "refers to itself through a YAML alias; write the value out"
    return f"is not valid ({error['msg']}), got {got}"


def _fits(path: Path, pattern: tuple[str, ...]) -> bool:
    if len(path) != len(pattern):
        return False
    return all(p in {part, "*"} for part, p in zip(path, pattern, strict=True))


def _child(parent: object, part: str | int) -> object:
    if isinstance(parent, dict):
        return parent.get(part)
    if isinstance(parent, list) and isinstance(part, int) and 0 <= part < len(parent):
        return parent[part]
    return None


def _position(mark: yaml.Mark | None) -> Position:
    return Position(mark.line + 1, mark.column + 1) if mark is not None else START


def _offset_position(text: str, offset: int) -> Position:
    offset = max(0, min(offset, len(text)))
    line_start = text.rfind("\n", 0, offset) + 1
    return Position(text.count("\n", 0, offset) + 1, offset - line_start + 1)


def _syntax_error(text: str, exc: yaml.YAMLError) -> YamlSyntaxError:
    if isinstance(exc, yaml.reader.ReaderError):
        message = f"invalid YAML: character #x{exc.character:04x} is not allowed ({exc.reason})"
        return YamlSyntaxError(message, _offset_position(text, exc.position))
    if not isinstance(exc, yaml.MarkedYAMLError):
        return YamlSyntaxError(f"invalid YAML: {exc}", START)
    problem = exc.problem or "cannot read this"
    if isinstance(exc, yaml.composer.ComposerError) and "another document" in problem:
        message = "the file must hold one YAML document; remove the second '---' and what follows"
    elif "'\\t'" in problem:
        message = "invalid YAML: a tab where YAML expects spaces; indent with spaces only"
    else:
        message = f"invalid YAML: {problem}"
        if exc.context and exc.context_mark is not None:
            where = _position(exc.context_mark)
            message += f" ({exc.context} at line {where.line}, column {where.column})"
    return YamlSyntaxError(message, _position(exc.problem_mark or exc.context_mark))


class _Builder:
    """Turns nodes into dicts, lists and scalars, noting positions on the way."""

    def __init__(self, loader: yaml.SafeLoader, located: LocatedYaml) -> None:
        self.loader = loader
        self.located = located
        self.root = located.root
        # an alias is the same node object again: build it once, so `&a [*a, *a, ...]`
        # bombs stay linear and self-references become Python self-references
        self.built: dict[int, object] = {}

    def build(self, node: Node, path: Path) -> object:
        self.located.values.setdefault(path, _position(node.start_mark))
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.built:
            return self.built[id(node)]
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            items: list[object] = []
            self.built[id(node)] = items
            items.extend(self.build(item, (*path, i)) for i, item in enumerate(node.value))
            return items
        raise YamlSyntaxError("invalid YAML: a node of unknown kind", _position(node.start_mark))

    def _scalar(self, node: ScalarNode, path: Path) -> object:
        if node.tag == STR_TAG:  # most scalars: the text is the value (PyYAML's own shortcut)
            return node.value
        if id(node) in self.built:
            value = self.built[id(node)]
        else:
            try:
                value = self.loader.construct_object(node, deep=True)
            except Exception as exc:  # a bad explicit tag: `!!int abc`, `!!binary ~`, `!custom`
                reason = getattr(exc, "problem", None) or str(exc)
                if "integer string conversion" in reason:  # Python's limit on decimal digits
                    reason = "a number of this many digits is more than any value needs"
                raise YamlSyntaxError(
                    f"invalid YAML: cannot read {show_value(node.value)} as {node.tag}: {reason}",
                    _position(node.start_mark),
                ) from None
            self.built[id(node)] = value
        # a plain scalar: PyYAML says style None, LibYAML an empty style
        if not node.style and value is not None and not isinstance(value, str):
            self.located.plain[path] = str(node.value)
        return value

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, object]:
        result: dict[str, object] = {}
        self.built[id(node)] = result
        for key_node, value_node in node.value:
            at = _position(key_node.start_mark)
            if key_node.tag == MERGE_TAG:
                message = "YAML merge keys (<<) are not supported here; write the keys out"
                self.located.issues.append(YamlIssue(at, path, message))
                continue
            if not isinstance(key_node, ScalarNode):
                message = f"{render_path(path) or self.root} has a key that is not a word"
                self.located.issues.append(YamlIssue(at, path, message + "; use plain keys"))
                continue
            # keys are names: `yes:` or `1:` stay the text written, never True or 1
            key = str(key_node.value)
            child = (*path, key)
            if key in result:
                first = self.located.keys[child]
                where = render_path(path) or self.root
                message = (
                    f"duplicate key {key!r} in {where} (first at line {first.line}, "
                    f"column {first.column}); keep one"
                )
                self.located.issues.append(YamlIssue(at, child, message))
                continue
            self.located.keys[child] = at
            result[key] = self.build(value_node, child)
        return result


def _compose(loader_class: type[yaml.SafeLoader], text: str) -> tuple[yaml.SafeLoader, Node | None]:
    loader = loader_class(text)
    try:
        return loader, loader.get_single_node()
    finally:
        loader.dispose()


def load_yaml(text: str, root: str = "the document") -> LocatedYaml:
    """The single document in `text` with positions; YamlSyntaxError when it is not YAML.

    `root` names the document in messages about its top-level keys.
    """
    try:
        try:
            loader, node = _compose(_FAST_LOADER, text)
        except yaml.YAMLError:
            if _FAST_LOADER is yaml.SafeLoader:
                raise
            # PyYAML's messages are the ones people are shown (and the docs quote): read the
            # text again with it to say what is wrong (or to take what only it reads).
            loader, node = _compose(yaml.SafeLoader, text)
    except yaml.YAMLError as exc:
        raise _syntax_error(text, exc) from None
    located = LocatedYaml(data=None, root=root)
    if node is not None:
        located.data = _Builder(loader, located).build(node, ())
    return located
