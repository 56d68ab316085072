"""A fleet of simulated devices for `ota simulate` and `ota demo`.

Each device is a real MQTT client with its own identity (client id and user name = device
id, password = device token) that obeys the commands the service sends (ARCHITECTURE §5):
it downloads firmware with its token, checks size and sha256, and reports each step.

In-process use::

    async with ApiClient(api_url, api_key, project_id) as api:
        fleet = Fleet(api, "127.0.0.1", 1883, Behaviour(fail_rate=0.1, seed=7))
        await fleet.start(500, tags=["canary"])   # registers or reuses, then connects
        ...                                       # fleet.stats: a FleetStats snapshot
        await fleet.stop()                        # disconnects (also: `async with fleet:`)

- `Behaviour` (frozen dataclass): `fail_rate`, `fail_versions` (version → rate),
  `reject_rate`, `offline_rate`, `latency_s` (min, max), `broken_download_rate`,
  `wrong_version_rate`, `stall_rate` with `stall` (a `Stall`: stop reading at a fraction of
  the file for a while, the connection held open or hung up), `seed`. Rates are fractions
  0..1; `parse_rate`, `parse_latency`, `parse_fail_version` and `parse_stall` read the CLI's
  spellings (`5%`, `0.1..0.5`, `1.2.0=0.5`). `SimulatedDevice.stall_next_download(stall)`
  makes one device's next download stall.
- `Fleet(api, mqtt_host, mqtt_port, behaviour=None, *, state_path=None, mqtt_version="5.0",
  mqtt_tls=False, connect_batch=100, max_downloads=64, name_prefix="sim")`:
  `await start(n_devices, tags=())` returns once every online device has tried to connect
  (TransportUnavailable if none could); `await stop()` is safe to repeat; `stats` and
  `devices` (each a `SimulatedDevice` with `id`, `version`, `connected`, `offline`).
- `state_path` is the device book (`DeviceBook`): the service shows a device token only
  when it creates the device, so the book keeps id and token per project, and a later run
  reuses those devices (the ones the service still has) and creates only the missing ones.
  Without a book every run creates new devices.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.simulator.behaviour import (
        Behaviour,
        Stall,
        parse_fail_version,
        parse_latency,
        parse_rate,
        parse_stall,
    )
    from orchestrator.simulator.book import (
        DEFAULT_BOOK_PATH,
        BookError,
        DeviceBook,
        DeviceIdentity,
    )
    from orchestrator.simulator.device import BrokerAddress, SimulatedDevice
    from orchestrator.simulator.fleet import Fleet
    from orchestrator.simulator.stats import FleetStats

# Each name, loaded from its module on first use: `ota` verbs that only read the options'
# spellings (behaviour, book, stats) do not load the MQTT client the devices use.
_MODULES = {
    "Behaviour": "behaviour",
    "Stall": "behaviour",
    "parse_fail_version": "behaviour",
    "parse_latency": "behaviour",
    "parse_rate": "behaviour",
    "parse_stall": "behaviour",
    "DEFAULT_BOOK_PATH": "book",
    "BookError": "book",
    "DeviceBook": "book",
    "DeviceIdentity": "book",
    "BrokerAddress": "device",
    "SimulatedDevice": "device",
    "Fleet": "fleet",
    "FleetStats": "stats",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "DEFAULT_BOOK_PATH",
    "Behaviour",
    "BookError",
    "BrokerAddress",
    "DeviceBook",
    "DeviceIdentity",
    "Fleet",
    "FleetStats",
    "SimulatedDevice",
    "Stall",
    "parse_fail_version",
    "parse_latency",
    "parse_rate",
    "parse_stall",
]
