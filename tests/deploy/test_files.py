"""deploy/ held to the code it deploys: settings, ports, routes, roles, shutdown bounds and paths.

Pure reading: no Docker and no cluster. What the files say is compared with what the package
really does (Settings' fields, the routes create_app serves per role, the shutdown timeouts).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import typing
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from starlette.routing import BaseRoute, Match

from orchestrator.api.app import create_app
from orchestrator.engine.engine import STOP_GRACE_S
from orchestrator.settings import Settings, variable_names
from tests.deploy import manifests
from tests.deploy.manifests import DEPLOY, ROOT

SETTING_NAMES = variable_names()
ROLES = frozenset(typing.get_args(Settings.model_fields["role"].annotation))
OTA_NAME = re.compile(r"\bOTA_[A-Z0-9_]+\b")
OTA_SERVICES = ("api", "engine-1", "engine-2")  # the compose services that run `ota serve`
DATA_MOUNT = "/var/lib/ota"


@cache
def app_routes(role: str) -> tuple[BaseRoute, ...]:
    """The routes of the app `ota serve --role ROLE` serves (built, never started: create_app
    connects to nothing until its lifespan runs)."""
    app = create_app(Settings(redis_url="redis://x", mqtt_url="mqtt://x", role=role))
    return tuple(app.routes)


def serves(role: str, path: str) -> bool:
    """True when a GET of `path` reaches a route of the app of `role`, as Starlette matches."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app_routes(role))


def uvicorn_grace_s() -> int:
    """uvicorn's graceful-shutdown bound as `ota serve` configures it."""
    source = (ROOT / "orchestrator" / "service.py").read_text()
    found = re.findall(r"timeout_graceful_shutdown=(\d+)", source)
    assert len(found) == 1, "orchestrator/service.py should set timeout_graceful_shutdown once"
    return int(found[0])


def shutdown_bound_s(role: str) -> float:
    """How long `ota serve --role ROLE` may take to stop after SIGTERM, by its own bounds."""
    engine = STOP_GRACE_S if role in ("all", "engine") else 0.0
    return uvicorn_grace_s() + engine


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage."""
    env: dict[str, str] = {}
    for instruction in manifests.stages(manifests.dockerfile())[-1]:
        if instruction.keyword == "ENV":
            for pair in re.findall(r"(\w+)=(\S+)", instruction.arguments):
                env[pair[0]] = pair[1]
    return env


def compose_env(service: str) -> dict[str, str]:
    """The environment a compose service's container gets: the image's, then the file's."""
    spec = manifests.compose()["services"][service]
    given = {k: str(v) for k, v in spec.get("environment", {}).items()}
    return {**image_env(), **given}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{source: target} of a compose service's short-form volumes."""
    return dict(tuple(volume.split(":")[:2]) for volume in service["volumes"])


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings these OTA_ variables make (validated as the service would read them)."""
    return Settings.model_validate({k.removeprefix("OTA_").lower(): v for k, v in env.items()})


def seconds(duration: str) -> float:
    """A compose duration ("1m30s", "60s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    assert parts, "an empty duration"
    return sum(float(n) * units[u] for n, u in parts)


def pre_stop_s(container: dict[str, Any]) -> float:
    """The pause a container's preStop `sleep` adds before SIGTERM (0 without one)."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one container of a workload."""
    [only] = workload["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def config_map() -> dict[str, str]:
    [found] = [o for o in manifests.k8s_objects() if o["kind"] == "ConfigMap"]
    data: dict[str, str] = found["data"]
    return data


# --- every file parses ------------------------------------------------------------------


@pytest.mark.parametrize("path", manifests.yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert manifests.load_all(path), f"{path} holds no YAML document"


def test_the_dockerfile_has_only_known_instructions_in_two_stages() -> None:
    known = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "HEALTHCHECK"}
    known |= {"ENTRYPOINT", "CMD", "ARG", "LABEL"}
    instructions = manifests.dockerfile()
    unknown = [(i.line, i.keyword) for i in instructions if i.keyword not in known]
    assert not unknown
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a multi-stage build: dependencies built apart from the final image"
    assert all(f.startswith("python:3.11-slim") for f in froms)


def test_the_mosquitto_scripts_are_valid_shell() -> None:
    for script in sorted((DEPLOY / "mosquitto").glob("*.sh")):
        done = subprocess.run(
            ["sh", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{script}: {done.stderr}"


# --- the image --------------------------------------------------------------------------


def test_the_final_stage_runs_as_a_non_root_user() -> None:
    final = manifests.stages(manifests.dockerfile())[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the final stage never sets USER, so it runs as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(user) != 0
    last_user_line = max(i.line for i in final if i.keyword == "USER")
    assert not [i for i in final if i.keyword == "RUN" and i.line > last_user_line]
    k8s_uids = {
        w["spec"]["template"]["spec"]["securityContext"]["runAsUser"] for w in manifests.workloads()
    }
    assert k8s_uids == {int(user)}


def test_the_image_runs_ota_serve() -> None:
    final = manifests.stages(manifests.dockerfile())[-1]
    [entrypoint] = [i.exec_form() for i in final if i.keyword == "ENTRYPOINT"]
    [cmd] = [i.exec_form() for i in final if i.keyword == "CMD"]
    assert entrypoint == ["ota"]
    assert cmd == ["serve"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'ota = "orchestrator.cli:main"' in pyproject


def test_the_image_installs_the_package_without_dev_extras() -> None:
    installs = [
        i.arguments
        for i in manifests.dockerfile()
        if i.keyword == "RUN" and "pip install" in i.arguments
    ]
    assert installs, "the package is never installed"
    assert all("[dev" not in line and "-e " not in line for line in installs)
    assert any(line.rstrip().endswith(" .") for line in installs)


def test_the_build_context_filter_lets_in_what_the_image_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for instruction in manifests.dockerfile():
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from"):
            *sources, _ = instruction.arguments.split()
            copied |= {s.rstrip("/") for s in sources}
    assert copied <= allowed
    assert all((ROOT / source).exists() for source in copied)


def test_the_image_listens_on_all_interfaces_on_the_port_it_exposes() -> None:
    env = image_env()
    assert env["OTA_HTTP_HOST"] == "0.0.0.0"
    settings = Settings(http_port=int(env["OTA_HTTP_PORT"]))
    exposed = [int(i.arguments) for i in manifests.dockerfile() if i.keyword == "EXPOSE"]
    assert exposed == [settings.http_port]
    assert env["OTA_DATA_DIR"] == DATA_MOUNT


def test_the_image_healthcheck_asks_healthz_without_curl() -> None:
    [check] = [i for i in manifests.dockerfile() if i.keyword == "HEALTHCHECK"]
    command = check.exec_form()
    assert command[0] == "python"
    assert "curl" not in check.arguments
    assert "/healthz" in command[-1]
    for role in ROLES:
        assert serves(role, "/healthz")


# --- settings, roles, ports, routes -------------------------------------------------------


def test_every_ota_variable_in_the_deploy_files_is_a_setting() -> None:
    cli_names = set()
    for source in (ROOT / "orchestrator" / "cli").glob("*.py"):
        cli_names |= set(OTA_NAME.findall(source.read_text()))
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        used = set(OTA_NAME.findall(path.read_text()))
        # The README may also name what the CLI reads (OTA_API_URL, OTA_API_KEY, OTA_PROJECT).
        known = SETTING_NAMES | cli_names if path.suffix == ".md" else SETTING_NAMES
        assert used <= known, f"{path.relative_to(ROOT)} uses {sorted(used - known)}"


def test_the_roles_used_exist_and_each_runs_ota_serve() -> None:
    used = []
    services = manifests.compose()["services"]
    for name in OTA_SERVICES:
        used.append(manifests.role_of(services[name]["command"]))
    for workload in manifests.workloads():
        spec = container(workload)
        assert "command" not in spec, "keep the image's ENTRYPOINT (ota)"
        used.append(manifests.role_of(spec["args"]))
    assert set(used) <= ROLES
    # compose: api, engine-1, engine-2; Kubernetes: the API Deployment, the engine StatefulSet
    assert sorted(used) == ["api", "api", "engine", "engine", "engine"]


def test_compose_ports_and_probes_match_the_service() -> None:
    services = manifests.compose()["services"]
    for name in OTA_SERVICES:
        spec = services[name]
        env = compose_env(name)
        port = Settings(http_port=int(env["OTA_HTTP_PORT"])).http_port
        for mapping in spec.get("ports", []):
            assert int(str(mapping).rsplit(":", 1)[1]) == port, (name, mapping)
        check = spec["healthcheck"]["test"]
        [url] = re.findall(r"http://[^'\"]+", " ".join(check))
        parts = urlsplit(url)
        assert parts.port == port, (name, url)
        role = manifests.role_of(spec["command"])
        assert parts.path == "/readyz"
        assert not serves(role, "/readyz/no-such-route"), "serves() must tell routes apart"
        assert serves(role, parts.path), (name, parts.path)
    assert [m.split(":")[-1] for m in services["api"]["ports"]] == ["8080"]


def test_k8s_ports_and_probes_match_the_service() -> None:
    port = int(config_map()["OTA_HTTP_PORT"])
    assert config_map()["OTA_HTTP_HOST"] == "0.0.0.0"
    for workload in manifests.workloads():
        spec = container(workload)
        role = manifests.role_of(spec["args"])
        assert [p["containerPort"] for p in spec["ports"]] == [port]
        names = {p["name"] for p in spec["ports"]}
        probes = {kind: spec[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        for kind, probe in probes.items():
            assert probe["httpGet"]["port"] in names | {port}, (kind, probe)
            assert serves(role, probe["httpGet"]["path"]), (workload["metadata"]["name"], kind)
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert serves(role, "/metrics")


def test_k8s_services_select_the_pods_and_reach_their_port() -> None:
    objects = manifests.k8s_objects()
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    pods = {
        w["metadata"]["name"]: (w["spec"]["template"]["metadata"]["labels"], container(w))
        for w in manifests.workloads()
    }
    api = services["ota-api"]
    assert [(p["port"], p["targetPort"]) for p in api["spec"]["ports"]] == [(80, "http")]
    engine = services["ota-engine"]
    for service in services.values():
        labels, spec = pods[service["metadata"]["name"]]
        assert service["spec"]["selector"].items() <= labels.items()
        port_names = {p["name"] for p in spec["ports"]}
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    [statefulset] = [w for w in manifests.workloads() if w["kind"] == "StatefulSet"]
    assert statefulset["spec"]["serviceName"] == engine["metadata"]["name"]
    assert engine["spec"]["clusterIP"] == "None"


def test_the_service_monitor_scrapes_metrics_of_every_service() -> None:
    objects = manifests.k8s_objects()
    [monitor] = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [o for o in objects if o["kind"] == "Service"]
    assert len(services) == 2
    for service in services:
        assert selector.items() <= service["metadata"]["labels"].items()
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"


def test_k8s_workloads_are_locked_down_with_budgets_and_resources() -> None:
    objects = manifests.k8s_objects()
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for workload in manifests.workloads():
        name = workload["metadata"]["name"]
        assert workload["spec"]["replicas"] == 2, name
        pod = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        spec = container(workload)
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= spec["resources"][kind].keys(), (name, kind)
        mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
        assert config_map()["OTA_DATA_DIR"] in mounts, "OTA_DATA_DIR must be writable"
        assert "/tmp" in mounts
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(mounts.values()) <= volumes.keys()
        assert [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ], f"no PodDisruptionBudget for {name}"
        env = {e["name"]: e for e in spec.get("env", [])}
        assert env["OTA_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert all(b["spec"]["minAvailable"] == 1 for b in budgets)


def test_api_replicas_share_the_uploaded_files() -> None:
    """Every API replica serves downloads of files uploaded to any of them."""
    [api] = [w for w in manifests.workloads() if w["metadata"]["name"] == "ota-api"]
    mounts = {m["mountPath"]: m["name"] for m in container(api)["volumeMounts"]}
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[config_map()["OTA_DATA_DIR"]]]["persistentVolumeClaim"]["claimName"]
    [pvc] = [
        o
        for o in manifests.k8s_objects()
        if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim
    ]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_secrets_hold_placeholders_and_the_config_map_none() -> None:
    [secret] = [o for o in manifests.k8s_objects() if o["kind"] == "Secret"]
    data = secret["stringData"]
    assert set(data) == {"OTA_REDIS_URL", "OTA_MQTT_URL"}
    assert all("CHANGE-ME" in value for value in data.values())
    Settings(redis_url=data["OTA_REDIS_URL"], mqtt_url=data["OTA_MQTT_URL"])
    assert urlsplit(data["OTA_MQTT_URL"]).username == "ota-service"
    assert not {"OTA_REDIS_URL", "OTA_MQTT_URL"} & config_map().keys()
    settings_from(config_map())


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((manifests.K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in manifests.K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert "namespace" not in kustomization
    assert all("namespace" not in o["metadata"] for o in manifests.k8s_objects())


# --- shutdown bounds ----------------------------------------------------------------------


def test_termination_grace_exceeds_the_shutdown_bounds() -> None:
    for workload in manifests.workloads():
        spec = container(workload)
        role = manifests.role_of(spec["args"])
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        needed = pre_stop_s(spec) + shutdown_bound_s(role)
        assert grace > needed, (workload["metadata"]["name"], grace, needed)
    services = manifests.compose()["services"]
    for name in OTA_SERVICES:
        role = manifests.role_of(services[name]["command"])
        grace = seconds(services[name]["stop_grace_period"])
        assert grace > shutdown_bound_s(role), (name, grace)


# --- compose: the servers and the monitoring --------------------------------------------


def test_compose_redis_keeps_an_append_only_file() -> None:
    redis = manifests.compose()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_environment_points_at_the_compose_servers() -> None:
    services = manifests.compose()["services"]
    variables = {"MQTT_SERVICE_PASSWORD": "secret"}
    instance_ids = set()
    for name in OTA_SERVICES:
        env = {k: manifests.interpolate(v, variables) for k, v in compose_env(name).items()}
        settings = settings_from(env)
        redis = urlsplit(settings.redis_url)
        mqtt = urlsplit(settings.mqtt_url)
        assert (redis.hostname, redis.port) == ("redis", 6379)
        assert (mqtt.hostname, mqtt.port) == ("mosquitto", 1883)
        assert (mqtt.username, mqtt.password) == ("ota-service", "secret")
        assert settings.mqtt_provision == "dynsec"
        assert settings.public_url == "http://localhost:8080"
        assert "redis" in services[name]["depends_on"]
        assert "mosquitto" in services[name]["depends_on"]
        instance_ids.add(settings.instance_id)
    assert len(instance_ids) == len(OTA_SERVICES), "each replica needs its own OTA_INSTANCE_ID"
    with pytest.raises(KeyError, match="MQTT_SERVICE_PASSWORD"):
        manifests.interpolate(services["api"]["environment"]["OTA_MQTT_URL"], {})


def test_compose_mosquitto_runs_the_shipped_config_with_dynamic_security() -> None:
    mosquitto = manifests.compose()["services"]["mosquitto"]
    assert mosquitto["image"].startswith("eclipse-mosquitto:2")
    mounts = volume_mounts(mosquitto)
    assert mounts["./mosquitto"] == "/mosquitto/config"
    assert mosquitto["command"] == ["/bin/sh", "/mosquitto/config/start.sh"]
    conf = manifests.conf_lines(manifests.MOSQUITTO_CONF)
    options = dict(conf)
    assert ("listener", "1883") in conf
    assert options["per_listener_settings"] == "false"
    assert options["allow_anonymous"] == "false"
    assert options["plugin"] == "/usr/lib/mosquitto_dynamic_security.so"
    assert options["persistence"] == "true"
    data = next(target for source, target in mounts.items() if source == "mosquitto-data")
    assert options["plugin_opt_config_file"].startswith(data + "/")
    assert options["persistence_location"].startswith(data + "/")
    assert int(options["max_queued_messages"]) >= 10_000
    assert int(options["autosave_interval"]) <= 60


def test_compose_prometheus_scrapes_every_replica_and_loads_the_rules() -> None:
    services = manifests.compose()["services"]
    prometheus = services["prometheus"]
    mounts = volume_mounts(prometheus)
    config_source = next(s for s, t in mounts.items() if t == "/etc/prometheus/prometheus.yml")
    config_path = DEPLOY / config_source
    config = yaml.safe_load(config_path.read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    expected = {f"{name}:{compose_env(name)['OTA_HTTP_PORT']}" for name in OTA_SERVICES}
    assert targets == expected
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).is_file(), rule_file
        in_container = Path("/etc/prometheus") / rule_file
        mounted = [t for t in mounts.values() if in_container.is_relative_to(t)]
        assert mounted, f"{rule_file} is not mounted into the container"
        source = next(s for s, t in mounts.items() if t in mounted)
        assert (DEPLOY / source / in_container.relative_to(mounted[0])).is_file()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed; run `make system-deps`")
    done = subprocess.run(
        [promtool, "check", "config", str(config_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_prometheus_config_references_existing_rule_files() -> None:
    for path in sorted((DEPLOY / "prometheus").glob("*.yml")):
        for rule_file in yaml.safe_load(path.read_text()).get("rule_files", []):
            assert (path.parent / rule_file).is_file(), (path, rule_file)


def test_compose_grafana_is_provisioned_from_the_grafana_folder() -> None:
    services = manifests.compose()["services"]
    grafana = services["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
        if source.startswith("."):
            assert (DEPLOY / source).is_dir(), f"{source} does not exist"
    providers = ROOT / "grafana" / "provisioning" / "dashboards"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "../grafana/provisioning/dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == "../grafana/provisioning/datasources"
    for provider_file in providers.glob("*.yaml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            path = provider["options"]["path"]
            assert (DEPLOY / mounts[path]).resolve() == ROOT / "grafana" / "dashboards"
            assert list((ROOT / "grafana" / "dashboards").glob("*.json"))
    datasources = ROOT / "grafana" / "provisioning" / "datasources"
    for source_file in datasources.glob("*.yaml"):
        for source in yaml.safe_load(source_file.read_text())["datasources"]:
            url = urlsplit(source["url"])
            assert url.hostname in services
            assert f"{url.port}:{url.port}" in services[url.hostname]["ports"]


def test_the_readme_names_every_deploy_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"):
        relative = path.relative_to(DEPLOY)
        if relative.parts[0] == "prometheus":
            continue  # prometheus/README.md describes its own files
        # k8s/ files are named in the table of the Kubernetes section
        shown = relative.name if relative.parts[0] == "k8s" else str(relative)
        assert f"`{shown}`" in readme, f"deploy/README.md does not mention {relative}"
