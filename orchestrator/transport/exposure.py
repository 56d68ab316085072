"""Whether the MQTT broker lets in a client that gives no credentials.

On a broker that does, with no ACL in the way, anyone who reaches it reads every command and
download URL sent to devices and publishes results for any device, which rollouts then count.
The service asks once at start, as a stranger would (no user name, a random client id, a clean
session), says so in a warning log line, and shows the answer in `/readyz` (`mqtt_anonymous`,
`warnings`): still ready, since commands flow, but not safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Literal

import structlog
import zmqtt

from orchestrator.errors import TransportUnavailable
from orchestrator.transport.clients import without_credentials, zmqtt_client

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_S = 10.0  # for the broker's CONNACK
PROBE_RETRY_S = (2.0, 60.0)  # first and longest pause between probes while the broker is away
ANONYMOUS_RISK = (
    "any client that reaches it can read every command and download URL sent to devices and "
    "publish results for any device, which rollouts then count"
)
ANONYMOUS_FIX = (
    "make it refuse clients without credentials: on the embedded broker leave "
    "OTA_MQTT_PROVISION unset (not none) with Mosquitto installed; on your own broker set "
    "allow_anonymous false with per-device accounts (OTA_MQTT_PROVISION=dynsec on Mosquitto); "
    "see docs/broker-security.md"
)


async def accepts_anonymous(
    url: str, *, version: Literal["5.0", "3.1.1"], timeout_s: float = PROBE_TIMEOUT_S
) -> bool:
    """True when the broker at `url` accepts a CONNECT without credentials, False when refused.

    TransportUnavailable when the broker cannot be reached or does not answer.
    """
    client = zmqtt_client(
        without_credentials(url),
        client_id=f"ota-anonymous-probe-{uuid.uuid4().hex[:12]}",
        version=version,
        clean_session=True,
        reconnect=zmqtt.ReconnectConfig(enabled=False),
        mqtt_connect_timeout=timeout_s,
    )
    try:
        async with asyncio.timeout(timeout_s):
            await client.connect()
    except zmqtt.MQTTConnectError:
        return False  # a CONNACK with a refusal: not authorised, bad user name or password
    except (zmqtt.MQTTError, OSError, TimeoutError) as exc:
        raise TransportUnavailable(
            f"the MQTT broker at {without_credentials(url)} did not answer "
            f"({exc or type(exc).__name__})"
        ) from exc
    with contextlib.suppress(zmqtt.MQTTError, OSError):
        await client.disconnect()
    return True


@dataclass
class BrokerExposure:
    """What the start-up probe found; `anonymous` is None until the broker has answered."""

    anonymous: bool | None = None

    @property
    def warnings(self) -> list[str]:
        """Sentences for /readyz: what is unsafe, what it means, what to do."""
        if not self.anonymous:
            return []
        return [f"the MQTT broker accepts anonymous clients: {ANONYMOUS_RISK}; {ANONYMOUS_FIX}"]


async def probe_until_answered(
    url: str, version: Literal["5.0", "3.1.1"], exposure: BrokerExposure
) -> None:
    """Probe the broker, retrying while it is away; record the answer and warn when it is open."""
    pause_s = PROBE_RETRY_S[0]
    while True:
        try:
            exposure.anonymous = await accepts_anonymous(url, version=version)
        except TransportUnavailable as exc:
            log.info("anonymous-access probe: no answer yet", error=exc.message, retry_in_s=pause_s)
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, PROBE_RETRY_S[1])
            continue
        break
    if exposure.anonymous:
        log.warning(
            f"the MQTT broker accepts anonymous clients: {ANONYMOUS_RISK}; {ANONYMOUS_FIX}",
            url=without_credentials(url),
        )
    else:
        log.info("the MQTT broker refuses anonymous clients", url=without_credentials(url))
