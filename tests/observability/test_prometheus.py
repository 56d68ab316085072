"""The shipped Prometheus config, alert rules and Grafana dashboard against a real Prometheus.

A `prometheus` from the machine scrapes the running test service every second while a good
rollout completes and a bad one rolls back; then every query of the dashboard must return
data, and the rollback must fire its alert. promtool checks the shipped files.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestrator.embedded import free_port
from tests.conftest import Service, wait_for
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import start, upload_both, wait_state

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "ota-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules" / "ota-alerts.test.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "ota-rollouts.json"
MISSING = "{} is not installed; run `make system-deps` (it installs it from the system packages)"

# What Grafana puts in place of its own variables, as it would for the last 10 minutes.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "5s",
    "__range": "10m",
    "__range_s": "600",
}


def binary(name: str) -> str:
    """The path of a Prometheus tool; the test fails (never skips) without it."""
    found = shutil.which(name)
    if not found:
        pytest.fail(MISSING.format(name))
    return found


def promtool(*args: str) -> None:
    """Run promtool; fail with its output when it disagrees."""
    done = subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_the_shipped_config_passes_promtool_check_config() -> None:
    promtool("check", "config", str(CONFIG))


def test_the_shipped_alert_rules_pass_promtool_check_rules() -> None:
    promtool("check", "rules", str(RULES))


def test_every_alert_has_promtool_tests_firing_and_not_firing() -> None:
    promtool("test", "rules", str(RULE_TESTS))
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert firing == alerts
    assert silent == alerts


@dataclass
class Prometheus:
    """A running prometheus: where its HTTP API is and where it logs."""

    url: str
    log: Path


async def query(client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    """The result of an instant query through Prometheus's HTTP API (failing on an error)."""
    response = await client.get("/api/v1/query", params={"query": promql})
    assert response.status_code == 200, (promql, response.text)
    body = response.json()
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scrape_config(service: Service, directory: Path) -> Path:
    """The shipped prometheus.yml, aimed at the test service, scraping and judging every 1 s."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    [job] = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": [service.base_url.removeprefix("http://")]}]
    config["rule_files"] = [str(RULES)]
    config.pop("alerting", None)  # no Alertmanager here; alerts are read from the API
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(service: Service, tmp_path: Path) -> Iterator[Prometheus]:
    """A real prometheus scraping the test service every second."""
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={scrape_config(service, tmp_path)}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not _ready(url):
            if process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 20 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Prometheus(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def client(prometheus: Prometheus) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the prometheus's HTTP API."""
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=10) as api:
        yield api


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"variable {variable['name']}", variable["query"]["query"])
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    assert len(queries) > 20
    return queries


def substitute(expr: str, values: dict[str, str]) -> str:
    """`$name` and `${name}` replaced as Grafana does; every variable must be known."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def grafana_inner(expr: str) -> str:
    """The PromQL inside Grafana's `query_result(...)` variable function."""
    match = re.fullmatch(r"query_result\((.*)\)", expr.strip(), re.DOTALL)
    return match.group(1) if match else expr


def variable_options(
    variable: dict[str, Any], result: list[dict[str, Any]]
) -> set[tuple[str, str]]:
    """(text, value) of each option Grafana makes from a query_result with the variable's regex.

    Grafana writes each series as `name{label="value",...} value timestamp` and applies the
    JavaScript regex with its `text` and `value` groups (the same syntax as Python's `(?P<>)`).
    """
    pattern = re.compile(variable["regex"].strip("/").replace("(?<", "(?P<"))
    options = set()
    for series in result:
        metric = dict(series["metric"])
        text = metric.pop("__name__", "")
        text += "{" + ",".join(f'{k}="{v}"' for k, v in metric.items()) + "}"
        match = pattern.search(f"{text} {series['value'][1]} {series['value'][0] * 1000}")
        assert match, (variable["name"], text)
        options.add((match.group("text"), match.group("value")))
    return options


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    service: Service, fleet: Fleet, prometheus: Prometheus, client: httpx.AsyncClient
) -> None:
    await upload_both(service)
    assert (await service.upload("fw_2.2.0.bin", b"\x7fELF-broken" * 500)).status_code == 201
    fleet.broken_files.add("fw_2.2.0.bin")
    await fleet.add(6, tags=["good"])
    await fleet.add(6, tags=["bad"])

    async def scraped() -> bool:  # before any result: every counter's rise is seen
        return bool(await query(client, 'up{job="ota-orchestrator"} == 1'))

    await wait_for(scraped, timeout_s=10, interval_s=0.1)
    good = await start(
        service,
        """
name: good-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
target: {tags: [good]}
waves: [{name: canary, devices: 2}, {percent: 100}]
""",
    )
    bad = await start(
        service,
        """
name: bad-2.2.0
firmware: {file: fw_2.2.0.bin, version: 2.2.0}
target: {tags: [bad]}
waves: [{name: canary, devices: 3}, {percent: 100}]
policy: {max_failure_rate: 20%, min_devices: 3, max_in_flight: 3, on_failure: rollback,
  confidence: 95%}
rollback: {file: fw_2.0.3.bin, version: 2.0.3}
""",
    )
    await wait_state(service, good["id"], "completed")
    await wait_state(service, bad["id"], "rolled_back")
    await check_dashboard(service, client, prometheus, good["id"], bad["id"])


async def check_dashboard(
    service: Service, client: httpx.AsyncClient, prometheus: Prometheus, good: str, bad: str
) -> None:
    """Once Prometheus has both rollouts' ends: every query has data, the alert fires."""

    async def scraped_and_judged() -> bool:
        finished = await query(
            client,
            f'ota_rollout_state{{rollout="{good}", state="completed"}} == 1'
            f' or ota_rollout_state{{rollout="{bad}", state="rolled_back"}} == 1',
        )
        alerts = (await client.get("/api/v1/alerts")).json()["data"]["alerts"]
        return len(finished) == 2 and any(
            a["labels"]["alertname"] == "OtaRolloutRolledBack"
            and a["labels"]["rollout"] == bad
            and a["state"] == "firing"
            for a in alerts
        )

    try:
        await wait_for(scraped_and_judged, timeout_s=20, interval_s=0.25)
    except TimeoutError:
        targets = (await client.get("/api/v1/targets")).json()
        log = prometheus.log.read_text()
        pytest.fail(f"prometheus never saw both rollouts end: {targets}\n{log}")

    values = {
        **GRAFANA_VARIABLES,
        "datasource": "ota-prometheus",
        "project": service.project_id,
        "rollout": f"({good}|{bad})",  # both selected: Grafana's multi-value form
    }
    for where, expr in dashboard_queries():
        promql = grafana_inner(substitute(expr, values))
        seen: list[dict[str, Any]] = []

        async def shows_a_number(promql: str = promql, seen: list[Any] = seen) -> bool:
            # A quantile of a series with no traffic in its window is NaN (a gap in Grafana).
            seen[:] = await query(client, promql)
            return any(not math.isnan(float(series["value"][1])) for series in seen)

        try:  # a rate needs two scrapes of a series, a moment after the rollouts end
            await wait_for(shows_a_number, timeout_s=10, interval_s=0.25)
        except TimeoutError:
            pytest.fail(f"{where} returns no data (or only NaN): {promql} -> {seen}")

    # What the panels show is the truth the API tells.
    by_state = {
        r["metric"]["state"]: float(r["value"][1])
        for r in await query(
            client,
            "sum by (state) (max by (project, rollout, state) "
            f'(ota_rollout_state{{project="{service.project_id}"}}))',
        )
    }
    assert by_state["completed"] == by_state["rolled_back"] == 1
    assert sum(by_state.values()) == 2
    good_devices = await query(
        client, f'sum by (state) (ota_rollout_devices{{rollout="{good}"}}) > 0'
    )
    assert {(r["metric"]["state"], r["value"][1]) for r in good_devices} == {("succeeded", "6")}

    # The variables list the projects and rollouts by name, with their ids as values.
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    for name, expected in (
        ("project", {("test", service.project_id)}),
        ("rollout", {("good-2.1.0", good), ("bad-2.2.0", bad)}),
    ):
        promql = grafana_inner(substitute(variables[name]["query"]["query"], values))
        assert variable_options(variables[name], await query(client, promql)) == expected

    rules = (await client.get("/api/v1/rules")).json()["data"]["groups"]
    unhealthy = [r for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy
