"""`ota validate` and `ota schema`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OTA = [sys.executable, "-m", "orchestrator"]


def run_ota(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OTA, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_a_good_plan_prints_ok_and_exits_0() -> None:
    result = run_ota("validate", "rollouts/canary.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok  rollouts/canary.yaml  (thermostat-2.1.0, 4 waves)\n"
    assert result.stderr == ""


def test_validate_a_bad_plan_prints_located_problems_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "rollout.yaml"
    bad.write_text(
        "name: demo\nfirmware:\n  file: fw.bin\nwaves:\n  - percent: 50\n  - percent: 120\n"
    )
    result = run_ota("validate", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"{bad}:6:14: waves[1].percent must be between 0 and 100, got 120\n"
    assert "Traceback" not in result.stderr


def test_validate_checks_every_file_and_fails_if_any_is_bad(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run_ota("validate", "rollouts/canary.yaml", str(missing), "rollouts/rollback.yaml")
    assert result.returncode == 1
    assert result.stdout.count("ok  ") == 2
    assert result.stderr == f"{missing}: cannot read the plan: no such file or directory\n"


def test_validate_a_file_that_is_not_utf8_names_the_place(tmp_path: Path) -> None:
    binary = tmp_path / "plan.yaml"
    binary.write_bytes(b"name: demo\nfirmware: \xff\n")
    result = run_ota("validate", str(binary))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{binary}:2:11: the plan is not UTF-8 text")
    assert "Traceback" not in result.stderr


def test_schema_prints_the_plan_json_schema() -> None:
    result = run_ota("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "waves" in schema["properties"]
    assert result.stdout.startswith('{\n  "$schema"')


def test_validate_checks_a_hook_template_with_sample_values(tmp_path: Path) -> None:
    result = run_ota("validate", "rollouts/webhook-template.yaml")
    assert result.returncode == 0, result.stderr
    assert "(hook template, thermostat-0.0.0-sample, 3 waves)" in result.stdout
    bad = tmp_path / "hook.yaml"
    bad.write_text("name: fw-${version}\nfirmware: {file: ${release}}\nwaves: [{percent: 100}]\n")
    refused = run_ota("validate", str(bad))
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"{bad}:2:18: ${{release}} is not a placeholder")
    assert "Traceback" not in refused.stderr


def test_validate_warns_of_a_first_wave_too_small_for_its_gate(tmp_path: Path) -> None:
    small = tmp_path / "small.yaml"
    small.write_text(
        "name: small\nfirmware: {file: fw.bin}\nwaves: [{name: canary, devices: 5}, "
        "{percent: 100}]\npolicy: {confidence: 95%}\n"
    )
    result = run_ota("validate", str(small))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        f"warning  {small}: canary of 5 with confidence 95%: a 10% failure rate is stopped in "
        "the canary with probability 0.41; 76 devices give 0.95"
    )


def test_plan_simulate_prints_one_json_object_with_the_documented_keys() -> None:
    result = run_ota(
        "plan", "rollouts/canary.yaml", "--simulate", "--devices", "200", "--failure-rate",
        "50%", "--runs", "20", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert list(summary) == [
        "runs", "devices", "failure_rate", "p_halt", "p_complete", "p_inconclusive_pause",
        "reached_mean", "reached_p95", "bad_installs_mean", "bad_installs_p95",
        "duration_s_mean",
    ]  # fmt: skip
    assert summary["runs"] == 20
    assert summary["devices"] == 200
    assert summary["p_halt"] == 1.0


def test_plan_simulate_prints_a_table_offline() -> None:
    result = run_ota(
        "plan", "rollouts/canary.yaml", "--simulate", "--devices", "100", "--failure-rate",
        "1%", "--runs", "10", "--api-url", "http://127.0.0.1:9",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "10 simulated runs on 100 devices failing at 1%" in result.stdout
    assert "paused as inconclusive" in result.stdout
    assert "bad installs" in result.stdout


def test_plan_simulate_refuses_a_wrong_option_by_name() -> None:
    result = run_ota("plan", "rollouts/canary.yaml", "--simulate", "--devices", "10")
    assert result.returncode == 2
    assert "--simulate needs --devices N and --failure-rate R" in _unboxed(result.stderr)
    stratum = run_ota(
        "plan", "rollouts/canary.yaml", "--simulate", "--devices", "10", "--failure-rate",
        "1%", "--by-stratum", "model:0.5",
    )  # fmt: skip
    assert stratum.returncode == 2
    assert "must read KEY=VALUE:RATE or KEY=VALUE:RATE@SHARE" in _unboxed(stratum.stderr)
    assert "Traceback" not in stratum.stderr


def _unboxed(text: str) -> str:
    """Typer's error box as one line of words."""
    return " ".join(text.replace("│", " ").split())
