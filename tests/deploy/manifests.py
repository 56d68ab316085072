"""The files of deploy/, read as the tools that use them would: YAML documents, the Dockerfile's
instructions, compose's variable interpolation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
K8S = DEPLOY / "k8s"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a dollar.
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_all(path: Path) -> list[Any]:
    """The YAML documents of `path` (empty ones dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    """docker-compose.yml with its anchors and merge keys resolved."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """`value` with compose's `${…}` substituted from `variables`, as `docker compose` does."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        given = variables.get(name)
        if op in (":?", "?") and (given is None or (op == ":?" and not given)):
            raise KeyError(f"compose needs {name}: {arg}")
        if op in (":-", "-") and (given is None or (op == ":-" and not given)):
            return arg
        return given or ""

    return _INTERPOLATION.sub(substitute, value)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD/RUN (ValueError for shell form)."""
        text = self.arguments
        if text.startswith("--"):  # HEALTHCHECK options before CMD
            text = text.split(" CMD ", 1)[1]
        parsed = json.loads(text)
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError(f"line {self.line}: {self.keyword} is not a JSON array of strings")
        return parsed


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions in order (comments and blank lines dropped)."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions grouped by build stage (each group starts with its FROM)."""
    groups: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            groups.append([])
        assert groups, f"line {instruction.line}: {instruction.keyword} before any FROM"
        groups[-1].append(instruction)
    return groups


def k8s_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object of deploy/k8s (the kustomization itself left out)."""
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            objects.append(doc)
    return objects


def workloads() -> Iterator[dict[str, Any]]:
    """The Deployments and StatefulSets of deploy/k8s."""
    return (o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet"))


def role_of(args: list[str]) -> str:
    """The value of `--role` in an `ota serve` argument list ("all" without one)."""
    assert args[:1] == ["serve"], f"expected `ota serve …`, got {args}"
    if "--role" in args:
        return args[args.index("--role") + 1]
    joined = [a.split("=", 1)[1] for a in args if a.startswith("--role=")]
    return joined[0] if joined else "all"


def conf_lines(path: Path) -> list[tuple[str, str]]:
    """(option, value) of each line of a mosquitto.conf."""
    pairs = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            option, _, value = line.partition(" ")
            pairs.append((option, value.strip()))
    return pairs
