"""The CLI reads the API's answer models without loading the service (FastAPI, the routes),
and loads the heavy libraries only in the verbs that use them."""

from __future__ import annotations

import json
import subprocess
import sys

SERVICE_MODULES = ("fastapi", "starlette", "orchestrator.api.app", "orchestrator.api.rollouts")
# What `ota status` and the like need not load: Redis's client (the offline admin verbs), the
# devices' MQTT clients (`ota simulate`, `ota demo`), numpy (`ota plan --simulate`), the
# settings and logging of the service (`ota serve`).
VERB_MODULES = (
    "redis",
    "aiomqtt",
    "paho",
    "zmqtt",
    "faststream",
    "numpy",
    "pydantic_settings",
    "structlog",
    "orchestrator.store",
    "orchestrator.simulator.fleet",
    "orchestrator.domain.simulation",
)


def loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has loaded after running `code`."""
    check = (
        f"{code}; import json, sys; print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(result.stdout))


def test_importing_the_cli_and_the_client_loads_no_part_of_the_service() -> None:
    assert loaded("import orchestrator.cli, orchestrator.client", SERVICE_MODULES) == []


def test_the_cli_starts_without_the_libraries_only_some_verbs_use() -> None:
    assert loaded("import orchestrator.cli", VERB_MODULES) == []


def test_the_simulators_names_load_from_their_modules_on_first_use() -> None:
    code = "import orchestrator.simulator as s; [getattr(s, name) for name in s.__all__]"
    assert loaded(code, ("aiomqtt", "orchestrator.simulator.fleet")) == [
        "aiomqtt",
        "orchestrator.simulator.fleet",
    ]
