"""The CLI reads the API's answer models without loading the service (FastAPI, the routes)."""

from __future__ import annotations

import subprocess
import sys

SERVICE_MODULES = ("fastapi", "starlette", "orchestrator.api.app", "orchestrator.api.rollouts")


def test_importing_the_cli_and_the_client_loads_no_part_of_the_service() -> None:
    code = (
        "import sys, orchestrator.cli, orchestrator.client; "
        f"print([name for name in {SERVICE_MODULES!r} if name in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
