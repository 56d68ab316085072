"""`ota demo` in a short form, as `make demo` runs it: nothing configured, nothing running."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """`ota demo ARGS` as on a fresh machine."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    # A Redis URL that answers nothing: the demo must ignore it and run on its own servers.
    clean["OTA_REDIS_URL"] = "redis://127.0.0.1:1/0"
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", *args],
        env={**clean, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_a_healthy_fleet_completes_every_wave_with_devices_logged_in_as_themselves() -> None:
    ran = run_demo("--devices", "30")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    said = " ".join(ran.stdout.split())  # however the console wrapped it
    assert "devices log in with user name and client id = device id" in said
    assert "ANONYMOUS" not in said
    assert "Traceback" not in ran.stderr
    assert "demo-2.1.0 ended completed after" in ran.stdout
    assert "devices by state:  succeeded 30" in ran.stdout
    for step in ("start", "wave_start", "complete"):
        assert f" {step} " in ran.stdout


def test_a_failing_firmware_rolls_back_the_devices_that_took_it() -> None:
    ran = run_demo("--devices", "40", "--fail-rate", "60%")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "demo-2.1.0 ended rolled_back after" in ran.stdout
    assert "rolled back because failure rate" in ran.stdout
    assert "is over max_failure_rate 10.0%" in ran.stdout
    assert "rolled_back " in ran.stdout.split("devices by state:")[1].splitlines()[0]


def test_health_shows_a_reverting_image_stopped_by_the_soak() -> None:
    ran = run_demo("--devices", "60", "--health")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "demo-health-2.1.0 ended rolled_back after" in ran.stdout
    assert "failures by type at the rollback:  reverted " in ran.stdout
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-rate", "2"], "--fail-rate must be a fraction between 0 and 1"),
        (["--devices", "0"], "--devices"),
        (["--plan", "/nonexistent.yaml"], "/nonexistent.yaml does not exist"),
    ],
)
def test_bad_options_are_refused_with_exit_2(args: list[str], message: str) -> None:
    ran = run_demo(*args)
    assert ran.returncode == 2
    assert message in ran.stderr
    assert "Traceback" not in ran.stderr
