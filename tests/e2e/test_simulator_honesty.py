"""The simulator's predictions against the real engine: the same plan run on real Redis and
mosquitto with a fleet of known failure rate, its outcomes within the simulator's own
distribution."""

from __future__ import annotations

import math
import random

from orchestrator.domain.plans import parse_plan
from orchestrator.domain.simulation import Outcome, simulate
from orchestrator.domain.synthetic_fleet import Fleet
from tests.conftest import Service
from tests.e2e.fleet import Fleet as DeviceFleet
from tests.e2e.test_rollouts import start, upload_both, wait_state

RUNS = 10
DEVICES = 20
FAILURE_RATE = 0.15
PLAN = """
name: {name}
firmware: {{file: fw_2.1.0.bin, version: 2.1.0}}
waves:
  - {{name: canary, devices: 10}}
  - percent: 100
policy: {{max_failure_rate: 10%, confidence: 90%}}
"""
STATES = {
    "halted": Outcome.HALT,
    "waiting_approval": Outcome.INCONCLUSIVE_PAUSE,
    "completed": Outcome.COMPLETE,
}
ALPHA = 0.01  # the chance this test fails although the simulator is right (at most)


def acceptance(p: float, runs: int, alpha: float) -> tuple[int, int]:
    """The counts out of `runs` a Binomial(runs, p) stays within with probability at least
    1 - alpha: alpha/2 cut from each tail."""
    pmf = [math.comb(runs, k) * p**k * (1 - p) ** (runs - k) for k in range(runs + 1)]
    low, tail = 0, 0.0
    while tail + pmf[low] <= alpha / 2:
        tail += pmf[low]
        low += 1
    high, tail = runs, 0.0
    while tail + pmf[high] <= alpha / 2:
        tail += pmf[high]
        high -= 1
    return low, high


def test_acceptance_regions_cut_at_most_alpha() -> None:
    assert acceptance(0.5, 10, 0.01) == (1, 9)
    assert acceptance(0.0, 10, 0.01) == (0, 0)


async def test_the_engine_s_outcomes_fall_within_the_simulator_s_distribution(
    service: Service, fleet: DeviceFleet
) -> None:
    predicted = simulate(
        parse_plan(PLAN.format(name="honest")),
        Fleet(DEVICES, FAILURE_RATE, latency_s=(0.05, 0.3)),
        runs=4000,
        seed=3,
    )
    chances = {
        Outcome.HALT: predicted.p_halt,
        Outcome.INCONCLUSIVE_PAUSE: predicted.p_inconclusive_pause,
        Outcome.COMPLETE: predicted.p_complete,
    }
    await upload_both(service)
    devices = await fleet.add(DEVICES)
    draw = random.Random(11)
    seen = dict.fromkeys(Outcome, 0)
    for run in range(RUNS):
        for device in devices:
            device.behaviour = "fail" if draw.random() < FAILURE_RATE else "succeed"
        rollout = await start(service, PLAN.format(name=f"honest-{run}"))
        ended = await wait_state(service, rollout["id"], *STATES, timeout_s=60)
        seen[STATES[ended["state"]]] += 1
        if ended["state"] != "completed":  # free the devices for the next run
            url = f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/abort"
            assert (await service.client.post(url)).status_code == 200
            await wait_state(service, rollout["id"], "aborted")
    # three outcomes, each within its region at ALPHA/3: all hold with probability >= 1-ALPHA
    for outcome, p in chances.items():
        low, high = acceptance(p, RUNS, ALPHA / len(chances))
        assert low <= seen[outcome] <= high, (
            f"{outcome}: {seen[outcome]} of {RUNS} real runs, the simulator predicts "
            f"{p:.3f} ({low}..{high} expected); all seen: {seen}"
        )
