"""`ota send`: command data is checked as standard JSON before any request is made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Nothing listens on the discard port: a request made anyway fails differently.
OFFLINE = {"OTA_API_URL": "http://127.0.0.1:9", "OTA_API_KEY": "QB_x", "OTA_PROJECT": "p"}


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ('{"limits": [1, NaN]}', "data.limits.1 is NaN"),
        ('{"t": Infinity}', "data.t is Infinity"),
        ("{oops", "not JSON"),
    ],
)
def test_send_refuses_data_that_is_not_standard_json_as_a_usage_error(data: str, said: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "send", "dev-1", "configuration", data],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert said in " ".join(result.stderr.split())  # Rich wraps long lines
    assert "Traceback" not in result.stderr
