"""`python -m bench.rollout_memory`: Redis memory per device of a finished rollout, before and
after its compaction (store/rollout_archive.py).

On a redis-server of its own (the system binary, on a free port), a rollout of N devices (UUID
ids, as the API makes them) runs to its end through the store, the way the engine drives one:
every device sent with its download key and command record, its key claimed, then 94% succeed,
3% fail and 3% time out; the rollout completes. Every key naming the rollout is measured with
`MEMORY USAGE … SAMPLES 0` (every element counted), then the rollout is compacted and measured
again. Command records and download keys are left out: they expire on their own (24 h and
OTA_DOWNLOAD_KEY_TTL). Prints a table and last one line:

    devices=1000 before_bytes_per_device=409 after_bytes_per_device=73 compaction_ms=40
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.domain.states import ROLLOUT_TRANSITIONS, DeviceEvent, RolloutState
from orchestrator.embedded import EmbeddedRedis
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from orchestrator.store.redis import connect
from orchestrator.store.rollout_devices import Grant

DEVICES = 1000
PREFIX = "{bench}:"
AT = "2030-01-02T03:04:05Z"
PLAN = {
    "name": "memory",
    "firmware": {"file": "fw_2.1.0.bin", "version": "2.1.0"},
    "waves": [{"percent": 10}, {"percent": 100}],
}
FAR_MS = 4_000_000_000_000  # a deadline that never comes


async def _move(stores: Stores, rollout_id: str, frm: RolloutState, to: RolloutState) -> None:
    await stores.rollouts.change_state(
        rollout_id,
        allowed_from=[frm],
        to=to,
        reason=f"to {to}",
        actor="engine",
        action=next(a for a, moves in ROLLOUT_TRANSITIONS.items() if moves.get(frm) == to),
        at=AT,
    )


async def finished_rollout(stores: Stores, n: int, *, project_id: str = "memory") -> str:
    """A completed rollout of `n` devices with UUID ids, its devices' records as the engine
    leaves them (see the module's docstring); its id."""
    devices = [str(uuid.uuid4()) for _ in range(n)]
    rollout_id, _ = await stores.rollouts.create(
        project_id=project_id,
        name=f"memory-{uuid.uuid4().hex[:8]}",
        plan=PLAN,
        device_ids=devices,
        reach=[max(1, n // 10), n],
        created_at=AT,
        created_by="bench",
    )
    await _move(stores, rollout_id, RolloutState.PENDING, RolloutState.RUNNING)
    grant = Grant(project_id=project_id, file_name="fw_2.1.0.bin", size=4096, key_ttl_s=1800)
    sent = await stores.rollout_devices.dispatch(
        rollout_id, count=n, reach=n, ack_deadline_ms=FAR_MS, grant=grant
    )
    await stores.rollout_devices.mark_published(rollout_id, *(item.device_id for item in sent))
    requests = []
    for i, item in enumerate(sent):
        device_id, command_id = item.device_id, item.command_id
        requests.append(
            TransitionRequest(
                rollout_id,
                device_id,
                DeviceEvent.KEY_CLAIMED,
                command_id=command_id,
                extra={"downloaded": 1},
            )
        )
        event, failure = {1: (DeviceEvent.FAILED, "failed"), 2: (DeviceEvent.TIMED_OUT, "")}.get(
            i % 33, (DeviceEvent.SUCCESS, "")
        )
        answered = "" if event is DeviceEvent.TIMED_OUT else command_id  # a timeout answers none
        requests.append(
            TransitionRequest(
                rollout_id,
                device_id,
                event,
                command_id=answered,
                drop_deadline=True,
                failure_type=failure or ("timed_out" if event is DeviceEvent.TIMED_OUT else ""),
            )
        )
    await stores.rollout_devices.transitions(requests)
    await _move(stores, rollout_id, RolloutState.RUNNING, RolloutState.COMPLETED)
    return rollout_id


async def rollout_bytes(stores: Stores, rollout_id: str) -> dict[str, tuple[int, int]]:
    """Keys and bytes (MEMORY USAGE, every element counted) per kind of key naming the rollout,
    and of the two indexes of finished rollouts."""
    redis = stores.redis
    keys = [str(key) async for key in redis.scan_iter(match=f"*{rollout_id}*", count=1000)]
    keys += [stores.keys.finished_rollouts(), stores.keys.archived_rollouts()]
    kinds: dict[str, tuple[int, int]] = {}
    for key in keys:
        size = await redis.memory_usage(key, samples=0)
        if size is None:
            continue
        kind = key.removeprefix(stores.keys.prefix).replace(rollout_id, "{id}")
        kind = kind.split(":dev:")[0] + ":dev:{device}" if ":dev:" in kind else kind
        count, total = kinds.get(kind, (0, 0))
        kinds[kind] = (count + 1, total + int(size))
    return kinds


def bytes_per_device(kinds: dict[str, tuple[int, int]], devices: int) -> float:
    """All the bytes measured, per device."""
    return sum(size for _, size in kinds.values()) / devices


@dataclass
class Measured:
    """What one run measured."""

    devices: int
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]
    compaction_s: float


async def measure(redis_url: str, devices: int) -> Measured:
    """Run a rollout to its end, measure, compact it, measure again."""
    redis = connect(redis_url)
    try:
        stores = Stores.build(redis, PREFIX)
        rollout_id = await finished_rollout(stores, devices)
        before = await rollout_bytes(stores, rollout_id)
        clock = time.perf_counter()
        compacted = await stores.archive.compact(rollout_id, max_devices=devices, at_ms=0)
        compaction_s = time.perf_counter() - clock
        if compacted.outcome != "done":
            raise RuntimeError(f"the compaction stopped at {compacted}")
        after = await rollout_bytes(stores, rollout_id)
        return Measured(devices, before, after, compaction_s)
    finally:
        await redis.aclose()


def report(measured: Measured) -> str:
    """The Markdown table and the summary line."""
    n = measured.devices
    lines = [
        f"Redis memory of a finished {n:,}-device rollout (MEMORY USAGE … SAMPLES 0):",
        "",
        "| when | key kind | keys | bytes | bytes/device |",
        "| --- | --- | --- | --- | --- |",
    ]
    for when, kinds in (("finished", measured.before), ("compacted", measured.after)):
        for kind, (keys, size) in sorted(kinds.items(), key=lambda item: -item[1][1]):
            lines.append(f"| {when} | `{kind}` | {keys:,} | {size:,} | {size / n:,.1f} |")
    before = bytes_per_device(measured.before, n)
    after = bytes_per_device(measured.after, n)
    lines += [
        "",
        f"devices={n} before_bytes_per_device={before:.0f} after_bytes_per_device={after:.0f} "
        f"compaction_ms={measured.compaction_s * 1000:.0f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.rollout_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--devices", type=int, default=DEVICES, help="devices in the rollout")
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        print("rollout_memory: redis-server is needed (make system-deps)", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="ota-memory-") as tmp,
        EmbeddedRedis(Path(tmp), binary=binary, appendonly=False).start() as server,
    ):
        measured = asyncio.run(measure(server.url, args.devices))
    print(report(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
