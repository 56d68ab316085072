"""Service settings, read from `OTA_` environment variables (ARCHITECTURE §3)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import sys
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.domain.destinations import AllowList, parse_allow_list
from orchestrator.domain.plan_values import parse_duration

LogFormat = Literal["console", "json"]
MIN_OFFLOAD_SECRET = 32  # characters of OTA_DOWNLOAD_OFFLOAD_SECRET, at least
_OFFLOAD_PREFIX = re.compile(r"/(?:[A-Za-z0-9._-]+/)+")
# Who keeps the broker's accounts (docs/broker-security.md):
#   ""     (default) the embedded broker runs Mosquitto's dynamic security, every device logging
#          in as itself; an external broker is left as its operator set it up;
#   dynsec the service keeps Mosquitto's dynamic security in step with the devices, on the
#          embedded broker or an external one;
#   none   no device accounts: the embedded broker lets in anyone, anonymous clients included.
MqttProvision = Literal["", "dynsec", "none"]

MQTT_TLS_PORT = 8883  # the IANA port of MQTT over TLS, where devices look first
DAY_S = 86_400
_DAYS = re.compile(r"(\d+(?:\.\d+)?)d(.*)")
KEEP_FOREVER = "forever"
MIN_RETENTION_S = 3600  # a finished rollout outlives whatever may still write about it


def _default_log_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


def parse_retention(value: object) -> float | None:
    """Seconds in a retention: a plan duration, optionally led by days (`90d`, `1d12h`), or a
    number of seconds; None for `forever`. ValueError, naming the forms, for anything else."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == KEEP_FOREVER:
            return None
        days = _DAYS.fullmatch(text)
        if days:
            rest = days.group(2)
            return float(days.group(1)) * DAY_S + (parse_duration(rest) if rest else 0.0)
    return parse_duration(value)


def _default_instance_id() -> str:
    # Stable across restarts: the engine's persistent MQTT session (and the results queued in
    # it while the process was down) belongs to this id. Replicas on one host must set their own.
    return socket.gethostname()


class Settings(BaseSettings):
    """Everything the service reads from its environment; empty URLs mean embedded servers."""

    # validate_by_name: a field read from a differently named variable (rollout_retention_s
    # from OTA_ROLLOUT_RETENTION: names carry their unit, variables keep theirs) can still be
    # given by its name, as tests do.
    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore", validate_by_name=True)

    redis_url: str = ""
    redis_prefix: str = Field(
        default="ota:", min_length=1
    )  # key namespace: several installs, one Redis
    mqtt_url: str = ""
    mqtt_version: Literal["5.0", "3.1.1"] = "5.0"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = ""
    data_dir: Path = Path(".ota")
    download_key_ttl_s: int = Field(default=1800, gt=0, validation_alias="ota_download_key_ttl")
    log_format: LogFormat = Field(default_factory=_default_log_format)
    log_level: str = "info"
    max_file_size_bytes: int = Field(
        default=268_435_456, gt=0, validation_alias="ota_max_file_size"
    )
    instance_id: str = Field(default_factory=_default_instance_id)
    role: Literal["all", "api", "engine"] = "all"  # engine = the rollout engine runs here
    mqtt_provision: MqttProvision = ""
    # With both, the embedded broker also listens with TLS for devices (docs: README "TLS for
    # devices"), on OTA_HTTP_HOST, where devices reach the API too. PEM files.
    mqtt_tls_cert: str = ""
    mqtt_tls_key: str = ""
    # 8883 by default, or a free port (with a warning) when 8883 is taken and this is unset;
    # 0: a free port
    mqtt_tls_port: int = Field(default=MQTT_TLS_PORT, ge=0, le=65535)
    download_offload: Literal["", "x-accel"] = ""
    # The nginx location (internal) that serves OTA_DATA_DIR/files; X-Accel-Redirect points there.
    download_offload_prefix: str = "/_ota_files/"
    # Shared with nginx: it vouches for the downloads it forwards and signs its delivery reports.
    download_offload_secret: str = ""
    # when set, GET /metrics wants `Authorization: Bearer <this token>` (401 otherwise)
    metrics_token: str = ""
    # seconds a finished rollout stays in the rollout gauges after its last change
    metrics_retention_s: int = Field(default=3600, ge=0, validation_alias="ota_metrics_retention")
    # seconds before a failed notification is tried again, doubling each time (to 1 h at most)
    notify_retry_s: float = Field(default=5.0, gt=0, validation_alias="ota_notify_retry")
    notify_attempts: int = Field(default=12, ge=1)  # then the notification is given up
    # host names and CIDRs notifications may go to although not public (docs/hooks.md)
    notify_allow_hosts: str = ""
    # seconds a finished rollout is kept, with its devices' records, before it is deleted;
    # OTA_ROLLOUT_RETENTION also takes 90d, 12h, 1d12h (1h at least) or `forever` (None)
    rollout_retention_s: float | None = Field(
        default=90 * DAY_S, validation_alias="ota_rollout_retention"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
        if value and not value.startswith(schemes):
            raise ValueError(
                f"OTA_REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// "
                f"or redis+cluster://, got {value!r}; leave it empty to start an embedded Redis"
            )
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str) -> str:
        if value and not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError(
                f"OTA_MQTT_URL must look like mqtt://[user:pass@]host:port, got {value!r}; "
                "leave it empty to start an embedded broker"
            )
        return value

    @field_validator("mqtt_provision", mode="before")
    @classmethod
    def _provision(cls, value: object) -> object:
        if value not in get_args(MqttProvision):
            raise ValueError(
                "OTA_MQTT_PROVISION must be empty (per-device accounts on the embedded broker), "
                "dynsec (keep Mosquitto's dynamic security in step with the devices) or none (no "
                f"device accounts: the embedded broker accepts anonymous clients), got {value!r}"
            )
        return value

    @field_validator("mqtt_tls_cert", "mqtt_tls_key")
    @classmethod
    def _readable(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        name = f"OTA_{str(info.field_name).upper()}"
        what = "certificate" if info.field_name == "mqtt_tls_cert" else "private key"
        path = Path(value)
        if not path.is_file():
            why = "does not exist" if not path.exists() else "is not a file"
        elif not os.access(path, os.R_OK):
            why = "cannot be read by this user"
        else:
            return value
        raise ValueError(
            f"{name}={value} {why}; give the path of the PEM {what} the embedded broker's TLS "
            "listener presents to devices, readable by the user that runs the service"
        )

    @model_validator(mode="after")
    def _mqtt_tls(self) -> Settings:
        cert, key = self.mqtt_tls_cert, self.mqtt_tls_key
        if not cert and not key:
            return self
        if not (cert and key):
            given, missing = (
                ("OTA_MQTT_TLS_CERT", "OTA_MQTT_TLS_KEY")
                if cert
                else ("OTA_MQTT_TLS_KEY", "OTA_MQTT_TLS_CERT")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: the broker's TLS listener needs both the "
                "certificate (PEM) and its private key (PEM, without a passphrase); set both, "
                "or neither for no TLS listener"
            )
        if self.mqtt_url:
            raise ValueError(
                "OTA_MQTT_TLS_CERT and OTA_MQTT_TLS_KEY give the embedded broker a TLS "
                f"listener, but OTA_MQTT_URL={self.mqtt_url.split('@')[-1]} names your own "
                "broker: configure TLS on that broker, and unset these two"
            )
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"OTA_MQTT_TLS_CERT={cert} and OTA_MQTT_TLS_KEY={key} are not a PEM certificate "
                f"and its private key ({exc}); the key must match the certificate and have no "
                "passphrase (the broker starts unattended)"
            ) from None
        return self

    @field_validator("rollout_retention_s", mode="before")
    @classmethod
    def _retention(cls, value: object) -> float | None:
        if value is None:
            return None
        try:
            seconds = parse_retention(value)
        except ValueError:
            raise ValueError(
                f"OTA_ROLLOUT_RETENTION must be a number of seconds, a duration such as 90d, "
                f"12h or 1d12h, or {KEEP_FOREVER} to keep every finished rollout, got {value!r}"
            ) from None
        if seconds == 0:
            raise ValueError(
                f"OTA_ROLLOUT_RETENTION must be longer than 0s, got {value!r}: 0 would not say "
                f"whether finished rollouts go at once or never; write {KEEP_FOREVER} to keep "
                "them, or a duration such as 1h to delete them soon"
            )
        if seconds is not None and seconds < MIN_RETENTION_S:
            raise ValueError(
                f"OTA_ROLLOUT_RETENTION must be at least 1h, got {value!r}: an engine step under "
                "way and late device results may still touch a rollout just after it finishes; "
                f"write 1h or more, or {KEEP_FOREVER}"
            )
        return seconds

    @field_validator("notify_allow_hosts")
    @classmethod
    def _notify_allow_hosts(cls, value: str) -> str:
        parse_allow_list(value)  # its ValueError names the entry and the form
        return value

    @field_validator("download_offload_prefix")
    @classmethod
    def _offload_prefix(cls, value: str) -> str:
        if not _OFFLOAD_PREFIX.fullmatch(value):
            raise ValueError(
                f"OTA_DOWNLOAD_OFFLOAD_PREFIX must be a URI path that starts and ends with '/' "
                f"(letters, digits, '.', '_', '-', '/'), got {value!r}; it names the internal "
                "nginx location of deploy/nginx/ota-offload.conf.template, e.g. /_ota_files/"
            )
        return value

    @model_validator(mode="after")
    def _offload_secret(self) -> Settings:
        if self.download_offload and len(self.download_offload_secret) < MIN_OFFLOAD_SECRET:
            raise ValueError(
                f"OTA_DOWNLOAD_OFFLOAD={self.download_offload} needs OTA_DOWNLOAD_OFFLOAD_SECRET "
                f"of at least {MIN_OFFLOAD_SECRET} characters (got "
                f"{len(self.download_offload_secret)}), the same one nginx sends: "
                "make one with `openssl rand -hex 32`"
            )
        return self

    @model_validator(mode="after")
    def _cluster_prefix(self) -> Settings:
        # Scripts change many keys at once; Cluster runs that only within one slot.
        tag = re.search(r"\{[^{}]+\}", self.redis_prefix)
        if self.redis_url.startswith("redis+cluster://") and tag is None:
            raise ValueError(
                f"OTA_REDIS_PREFIX {self.redis_prefix!r} has no hash tag, but Redis Cluster "
                "needs every key of one installation in one slot: set OTA_REDIS_PREFIX={ota}: "
                "(any text in braces)"
            )
        return self

    @model_validator(mode="after")
    def _public_url_default(self) -> Settings:
        if not self.public_url:
            self.public_url = f"http://{self.http_host}:{self.http_port}"
        self.public_url = self.public_url.rstrip("/")
        return self

    @property
    def notify_allow(self) -> AllowList:
        """The hosts and ranges notifications may go to although they are not public."""
        return parse_allow_list(self.notify_allow_hosts)

    @property
    def mqtt_tls(self) -> bool:
        """Whether the embedded broker listens with TLS for devices."""
        return bool(self.mqtt_tls_cert)

    @property
    def files_dir(self) -> Path:
        """Where uploaded firmware and logo files live."""
        return self.data_dir / "files"

    @property
    def redis_data_dir(self) -> Path:
        """Where the embedded Redis keeps its append-only file."""
        return self.data_dir / "redis"

    @property
    def broker_data_dir(self) -> Path:
        """Where the embedded MQTT broker keeps its config, log and persistence."""
        return self.data_dir / "mqtt"


def variable_names() -> frozenset[str]:
    """The environment variable of every setting (`OTA_` and the name, or the field's alias)."""
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else f"OTA_{name.upper()}")
    return frozenset(names)
