"""Mosquitto's dynamic-security config file, written before the embedded broker starts.

The plugin keeps its clients, roles and ACLs in one JSON file that it rewrites on every change;
the embedded broker (orchestrator/embedded.py) makes sure the service's own client and roles are
in it, with a password of this start, while the broker is stopped. At run time the service
manages device clients through the plugin's control topic (orchestrator/transport/dynsec.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any


class DynsecConfigError(RuntimeError):
    """The config file cannot be made or read; the message says why and what to do."""


DYNSEC_ADMIN_ROLE = "admin"  # the role `mosquitto_ctrl dynsec init` gives its admin client
DYNSEC_SERVICE_ROLE = "ota-service"  # what the service publishes and reads besides $CONTROL
# The service sends commands and reads results (ARCHITECTURE §5); the admin role made by
# `mosquitto_ctrl dynsec init` already lets it subscribe to and receive every topic.
DYNSEC_SERVICE_ACLS = (
    {"acltype": "publishClientSend", "topic": "+/control/+", "allow": True},
    {"acltype": "subscribePattern", "topic": "+/control/+/result", "allow": True},
    {"acltype": "publishClientReceive", "topic": "+/control/+/result", "allow": True},
)
_DYNSEC_PBKDF2_ITERATIONS = 101  # what Mosquitto 2.0's plugin itself uses


def _dynsec_password(password: str) -> dict[str, Any]:
    """The plugin's stored form of `password`: PBKDF2-HMAC-SHA512 over a 12-byte salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _DYNSEC_PBKDF2_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": _DYNSEC_PBKDF2_ITERATIONS,
    }


def _dynsec_skeleton() -> dict[str, Any]:
    """What `mosquitto_ctrl dynsec init` writes, less its admin client: used without the tool."""
    everything = "#"
    control = "$CONTROL/dynamic-security/#"
    acls = [
        {"acltype": "publishClientSend", "topic": control, "allow": True},
        {"acltype": "publishClientReceive", "topic": control, "allow": True},
        {"acltype": "subscribePattern", "topic": control, "allow": True},
        {"acltype": "publishClientReceive", "topic": "$SYS/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "$SYS/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": everything, "allow": True},
        {"acltype": "subscribePattern", "topic": everything, "allow": True},
        {"acltype": "unsubscribePattern", "topic": everything, "allow": True},
    ]
    return {
        "clients": [],
        "roles": [{"rolename": DYNSEC_ADMIN_ROLE, "acls": acls}],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def write_dynsec_config(path: Path, username: str, password: str) -> None:
    """Create or update the plugin's config so that `username`/`password` is the service.

    A new file comes from `mosquitto_ctrl dynsec init` when the tool is installed, else is
    written here in the same form. Then (new file or kept from an earlier run, with its device
    clients) the service client gets this password, the admin role and the service role.
    Call it only while the broker is stopped: the plugin rewrites the file on every change.
    """
    ctrl = shutil.which("mosquitto_ctrl")
    if not path.exists():
        if ctrl is not None:
            done = subprocess.run(
                [ctrl, "dynsec", "init", str(path), username, password],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                raise DynsecConfigError(
                    f"`mosquitto_ctrl dynsec init {path} {username}` failed with code "
                    f"{done.returncode}: {done.stderr.decode(errors='replace').strip()}; "
                    f"remove {path} or check that its directory is writable"
                )
        else:
            path.write_text(json.dumps(_dynsec_skeleton(), indent=1) + "\n")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DynsecConfigError(
            f"The dynamic-security config {path} cannot be read as JSON ({exc}); "
            "remove it to start from a fresh one (device clients are then re-created by "
            "the service at start, without their passwords)"
        ) from exc
    roles = config.setdefault("roles", [])
    if not any(role.get("rolename") == DYNSEC_ADMIN_ROLE for role in roles):
        roles.extend(_dynsec_skeleton()["roles"])
    roles[:] = [role for role in roles if role.get("rolename") != DYNSEC_SERVICE_ROLE]
    roles.append({"rolename": DYNSEC_SERVICE_ROLE, "acls": list(DYNSEC_SERVICE_ACLS)})
    clients = config.setdefault("clients", [])
    clients[:] = [client for client in clients if client.get("username") != username]
    clients.append(
        {
            "username": username,
            "textName": "OTA orchestrator service",
            **_dynsec_password(password),
            "roles": [{"rolename": DYNSEC_ADMIN_ROLE}, {"rolename": DYNSEC_SERVICE_ROLE}],
        }
    )
    path.write_text(json.dumps(config, indent=1) + "\n")
    path.chmod(0o600)  # password hashes
