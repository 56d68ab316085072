"""The plan simulator: a plan run many times against a synthetic fleet, offline.

Each run drives the engine's own step function (domain.progress.decide) on a simulated clock:
the devices the steps dispatch finish after a latency drawn from the fleet's range and fail
with the fleet's true rate (a device the firmware does not suit fails on every try, retries
included). The summary says how often the plan halts, completes or pauses as inconclusive,
how many devices it reaches, how many bad installs it lets through, and how long it takes.

The simulator looks at the rollout less often than the engine (every 0.1 s): it calls decide
at once when a result could cross a gate (the policy's fewest failures that can cross at that
count, domain.policy.fewest_failures_to_cross), when a retry or a wave's last result comes in,
at every time a step asks to be woken (a bake's end), once a tenth of `max_in_flight` has
freed up, and otherwise at most once a simulated second (the rate's bucket holds one second's
worth, so the rate is kept). Halts and pauses are therefore found at the result that causes
them; dispatch after freed room may start up to that batch later than the engine would.
Between two looks, a run of successes that crosses no gate and ends no wave is counted at once
(the same counts as one by one). At a look where no limit can be crossed and the wave has
devices left to send, decide could only answer with its dispatch step, so the simulator asks
that step (domain.progress.dispatch_step) directly; `check_steps` compares the two at every
such look, and the tests do.

Each device's first result (its latency, and whether the firmware fails on it) is drawn for
the whole fleet at a run's start, with numpy; a retry's latency is drawn when it is sent.

With `policy.by` the fleet has exactly each stratum's share, its devices labelled as the
engine labels them and sent in the engine's stratified order, and each stratum's counters are
in the look; with `policy.health` a success is verifying for the soak before it counts.
Each run draws from its own generators seeded by (seed, its number), so runs can be shared
among processes without changing the summary.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import random
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from orchestrator.domain import counters
from orchestrator.domain.cohorts import wave_reach
from orchestrator.domain.plans import FailureType, Plan
from orchestrator.domain.policy import fewest_failures_to_cross
from orchestrator.domain.progress import (
    DISPATCH_BATCH,
    Advance,
    Breach,
    Bucket,
    Complete,
    Dispatch,
    Inconclusive,
    Look,
    Start,
    Step,
    Wait,
    WaveDone,
    decide,
    dispatch_step,
)
from orchestrator.domain.states import DeviceState, RolloutState
from orchestrator.domain.strata import proportional_order
from orchestrator.domain.synthetic_fleet import MAX_DEVICES, RUNS, Fleet

LOOK_MS = 1_000  # the longest the simulator lets pass between two looks while sending
REFILL_SHARE = 0.1  # of max_in_flight freed before the simulator looks again to fill it
MIN_RUNS_PER_WORKER = 50  # fewer runs than this per process are not worth a process
_METHODS = multiprocessing.get_all_start_methods()
START_MS = 1_000_000  # the simulated clock at a run's start (any value; durations count)

_SUCCEEDED = counters.total(DeviceState.SUCCEEDED)
_SENT = counters.total(DeviceState.SENT)
_FAILED = counters.failures(FailureType.FAILED)
_TIMED_OUT = counters.failures(FailureType.TIMED_OUT)
_SUCCESS, _FAIL, _TIMEOUT = 0, 1, 2  # a result in the simulated fleet
_SCAN = 256  # results looked at together for a run of successes (a longer run takes more)
_SOAKED = 3  # with policy.health: a success's soak is over, it counts (verifying -> succeeded)
_SIMULATED_FAILURES = (FailureType.FAILED, FailureType.TIMED_OUT)
_REST = "(rest)"  # with `policy.by`, the value of the devices in no stratum of the fleet
_TIME_SHIFT = 26  # bits below a result's time: its device (24) and its kind (2)
_DEVICE_MASK = (1 << _TIME_SHIFT) - 1
_NEVER = 1 << 80  # later than any result's entry, more than any count


class Outcome(StrEnum):
    """How a simulated run ended."""

    HALT = "halt"  # a limit was crossed: halted or rolled back
    COMPLETE = "complete"
    INCONCLUSIVE_PAUSE = "inconclusive_pause"  # a wave end waited for a person


@dataclass(frozen=True, slots=True)
class Run:
    """One simulated rollout."""

    outcome: Outcome
    reached: int  # devices sent the firmware
    bad_installs: int  # of them, devices the firmware fails on
    duration_s: float


@dataclass(frozen=True)
class Summary:
    """What K runs of a plan against a fleet came to (the --json keys, in order)."""

    runs: int
    devices: int
    failure_rate: float
    p_halt: float
    p_complete: float
    p_inconclusive_pause: float
    reached_mean: float
    reached_p95: int
    bad_installs_mean: float
    bad_installs_p95: int
    duration_s_mean: float

    def as_json(self) -> dict[str, float | int]:
        """The summary as one JSON object, with exactly the documented keys."""
        return {
            "runs": self.runs,
            "devices": self.devices,
            "failure_rate": self.failure_rate,
            "p_halt": round(self.p_halt, 4),
            "p_complete": round(self.p_complete, 4),
            "p_inconclusive_pause": round(self.p_inconclusive_pause, 4),
            "reached_mean": round(self.reached_mean, 1),
            "reached_p95": self.reached_p95,
            "bad_installs_mean": round(self.bad_installs_mean, 2),
            "bad_installs_p95": self.bad_installs_p95,
            "duration_s_mean": round(self.duration_s_mean, 1),
        }


def _sizes(shares: Sequence[float], devices: int) -> list[int]:
    """Devices of each share of a fleet of `devices`, adding up to it (largest remainders)."""
    total = sum(shares) or 1.0
    exact = [share / total * devices for share in shares]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: sizes[i] - exact[i])
    for i in by_remainder[: devices - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _p95(values: Sequence[int]) -> int:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(runs: Sequence[Run], fleet: Fleet) -> Summary:
    """The summary of `runs`."""
    count = len(runs)
    outcomes = [run.outcome for run in runs]
    reached = [run.reached for run in runs]
    bad = [run.bad_installs for run in runs]
    return Summary(
        runs=count,
        devices=fleet.devices,
        failure_rate=round(fleet.true_failure_rate, 6),
        p_halt=outcomes.count(Outcome.HALT) / count,
        p_complete=outcomes.count(Outcome.COMPLETE) / count,
        p_inconclusive_pause=outcomes.count(Outcome.INCONCLUSIVE_PAUSE) / count,
        reached_mean=sum(reached) / count,
        reached_p95=_p95(reached),
        bad_installs_mean=sum(bad) / count,
        bad_installs_p95=_p95(bad),
        duration_s_mean=sum(run.duration_s for run in runs) / count,
    )


def simulate(
    plan: Plan,
    fleet: Fleet,
    *,
    runs: int = RUNS,
    seed: int = 0,
    workers: int = 1,
    check_steps: bool = False,
) -> Summary:
    """Run `plan` `runs` times against `fleet`; the same seed gives the same summary.

    Run i draws from its own generators, seeded by (seed, i), so the summary is the same
    whatever the number of `workers` (processes sharing the runs; 1: this process only).
    `check_steps` asks decide() at every look too and fails if a look that skipped it took
    another step (slower; the tests' check of the shortcut).
    """
    if not 1 <= fleet.devices <= MAX_DEVICES:
        raise ValueError(
            f"a simulated fleet has 1 to {MAX_DEVICES:,} devices, got {fleet.devices:,}"
        )
    if runs < 1:
        raise ValueError(f"a simulation needs at least 1 run, got {runs}")
    workers = max(1, min(workers, runs // MIN_RUNS_PER_WORKER))
    if workers == 1:
        return summarize(_runs(plan, fleet, seed, 0, runs, check_steps), fleet)
    bounds = [runs * k // workers for k in range(workers + 1)]
    context = multiprocessing.get_context("fork" if "fork" in _METHODS else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = pool.map(
            _runs,
            *zip(
                *((plan, fleet, seed, a, b, check_steps) for a, b in itertools.pairwise(bounds)),
                strict=True,
            ),
        )
        return summarize([run for part in parts for run in part], fleet)


def default_workers() -> int:
    """The processes a simulation asked for at the command line shares its runs among."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _runs(
    plan: Plan, fleet: Fleet, seed: int, first: int, stop: int, check_steps: bool = False
) -> list[Run]:
    """Runs number `first` to `stop` - 1 of a simulation, each from its own seeded generator."""
    sim = _Simulator(plan, fleet, seed, check_steps=check_steps)
    return [
        sim.run(random.Random(f"{seed}:{index}"))  # noqa: S311 (a seeded simulation)
        for index in range(first, stop)
    ]


class _Simulator:
    """What all runs of one plan against one fleet share: reach, gates, look rules."""

    def __init__(
        self, plan: Plan, fleet: Fleet, seed: int = 0, *, check_steps: bool = False
    ) -> None:
        self.plan = plan
        self.check_steps = check_steps  # compare each quiet look's step with decide's
        self.fleet = fleet
        self.reach = tuple(wave_reach(plan.waves, fleet.devices))
        policy = plan.policy
        # fewest failures that could cross a gate mid-wave, by finished count
        self.gate = [
            fewest_failures_to_cross(policy, n, _SIMULATED_FAILURES)
            for n in range(fleet.devices + 1)
        ]
        # the fewest of the gates from a finished count on (a gate can lie below its
        # predecessors where min_devices starts)
        floor = list(itertools.accumulate(reversed(self.gate), min))
        self.gate_floor = [*reversed(floor), _NEVER]
        self.refill = (
            max(1, int(policy.max_in_flight * REFILL_SHARE)) if policy.max_in_flight else 0
        )
        self.timeout_ms = int(policy.device_timeout_s * 1000)
        low, high = fleet.latency_s
        self.low_ms, self.span_ms = low * 1000, max(0.0, high - low) * 1000
        cumulative, total = [], 0.0
        for share, rate in fleet.groups():
            total += share
            cumulative.append((total, rate))
        self.groups = cumulative
        # what every run's draws share: the groups' edges and rates, each device's bits
        self.edges = np.asarray([edge for edge, _ in cumulative])
        self.group_rates = np.asarray([rate for _, rate in cumulative])
        self.device_bits = np.arange(fleet.devices, dtype=np.int64) << 2
        self._stratify(plan.policy.by, seed)
        self.pending = [counters.in_wave(w, DeviceState.PENDING) for w in range(len(self.reach))]
        self.sent = [counters.in_wave(w, DeviceState.SENT) for w in range(len(self.reach))]

    def _stratify(self, by: Sequence[str], seed: int) -> None:
        """With `policy.by`: each device's group (a stratum of the fleet, or the rest) in the
        engine's stratified order, and the labels each group's devices are counted under."""
        self.group_of: list[int] = []  # by device in order; empty: groups drawn by chance
        self.labels_of: list[tuple[int, ...]] = []  # by group: its label numbers
        self.label_counters: list[tuple[str, str, str]] = []  # by label: its counters' names
        self.rate_in_order: np.ndarray | None = None  # by device in order, its group's rate
        if not by:
            return
        fleet = self.fleet
        sizes = _sizes([share for share, _ in fleet.groups()], fleet.devices)
        # the devices in hash order: the groups in an order as random as the engine's hash
        in_hash_order = [group for group, size in enumerate(sizes) for _ in range(size)]
        random.Random(f"{seed}:order").shuffle(in_hash_order)  # noqa: S311 (seeded)
        names: dict[str, int] = {}
        kinds = [(s.key, s.value) for s in fleet.strata] + [("", "")]
        for key, value in kinds:
            labels = tuple(f"{entry}={value if entry == key else _REST}" for entry in by)
            self.labels_of.append(tuple(names.setdefault(label, len(names)) for label in labels))
        # two groups with the same labels (strata of a key not in `by`) are one stratum
        self.group_of = [in_hash_order[at] for at in proportional_order(in_hash_order)]
        self.label_counters = [
            (
                counters.in_stratum(label, DeviceState.SUCCEEDED),
                counters.stratum_failures(label, FailureType.FAILED),
                counters.stratum_failures(label, FailureType.TIMED_OUT),
            )
            for label in names
        ]
        rates = np.asarray([rate for _, rate in fleet.groups()])
        self.rate_in_order = rates[np.asarray(self.group_of)]

    def _draw(self, draws: np.random.Generator) -> tuple[list[int], list[int], list[int]]:
        """Every device's first result, drawn at once: its entry as if sent at time 0 (latency
        ms << _TIME_SHIFT | device << 2 | kind); the devices whose first result is a failure
        or a time-out; the devices the firmware fails on (both in order)."""
        devices = self.fleet.devices
        rate: float | np.ndarray
        if self.rate_in_order is not None:
            rate = self.rate_in_order
        elif len(self.groups) == 1:
            rate = self.groups[0][1]
        else:  # each device's group drawn by chance, by the groups' shares
            picked = np.searchsorted(self.edges, draws.random(devices), side="right")
            rate = self.group_rates[np.minimum(picked, len(self.group_rates) - 1)]
        latency = self.low_ms + self.span_ms * draws.random(devices)
        is_bad = draws.random(devices) < rate
        late = latency > self.timeout_ms
        kind = np.where(late, _TIMEOUT, is_bad.astype(np.int64))
        at = np.where(late, self.timeout_ms, latency).astype(np.int64)
        code = (at << _TIME_SHIFT) | self.device_bits | kind
        return code.tolist(), np.flatnonzero(kind).tolist(), np.flatnonzero(is_bad).tolist()

    def run(self, rng: random.Random) -> Run:
        """One simulated rollout."""
        plan, reach, gate, gate_floor = self.plan, self.reach, self.gate, self.gate_floor
        random_ = rng.random
        retries, refill = plan.policy.retries, self.refill
        low_ms, span_ms, timeout_ms = self.low_ms, self.span_ms, self.timeout_ms
        never_late = low_ms + span_ms < timeout_ms
        group_of, labels_of = self.group_of, self.labels_of
        # every device's result drawn at once, as if it were sent at time 0:
        # code[d] = (latency ms << _TIME_SHIFT) | (d << 2) | kind; a dispatch at `now` adds
        # now << _TIME_SHIFT. `bad`: the devices the firmware fails on, every try, in order.
        code, failing, bad = self._draw(np.random.default_rng(rng.getrandbits(64)))
        bad_devices = set(bad)

        label_counters = self.label_counters
        # with `policy.by`, each label's successes, failures and time-outs
        by_label = [[0, 0, 0] for _ in label_counters]
        now = START_MS
        state, wave, cursor, wave_done = RolloutState.PENDING, 0, 0, 0
        bucket = Bucket(0.0, now)
        succeeded = failed = timed_out = in_flight = 0
        health = plan.policy.health
        soak_ms = int(health.soak_s * 1000) if health is not None else 0
        # successes counted in runs (one by one with strata or a soak)
        bulk = not group_of and not soak_ms
        open_in_wave = [0] * len(reach)  # devices of each wave sent and not final
        retry_line: list[int] = []  # devices back in the queue for another try
        attempts: dict[int, int] = {}  # tries of the devices tried more than once
        # each result as one int, ordered by time: (at ms << _TIME_SHIFT) | (device << 2) | kind
        line: list[int] = []  # the results to come, in time order from `head` on
        head = 0
        # results sent since `line` was last merged, unsorted: none comes before `fresh_at`
        # (soonest: the least a latency can be), so they are merged only when needed
        fresh: list[int] = []
        fresh_at = _NEVER
        soonest = min(int(low_ms), timeout_ms) << _TIME_SHIFT
        # the failures and time-outs of `line`, in the same order from `fail_head` on
        fail_line: list[int] = []
        fail_head = 0
        bad_installs = 0
        outcome: Outcome | None = None
        pending_names, sent_names = self.pending, self.sent
        quiet = not group_of  # looks that only dispatch skip decide's other checks

        def look_now() -> Look:
            """The look the engine would take now."""
            counts = {
                _SUCCEEDED: succeeded,
                _FAILED: failed,
                _TIMED_OUT: timed_out,
                _SENT: in_flight,
                # the wave's devices not final (sent, or verifying in a soak), under `sent`:
                # the step function reads only their sum
                sent_names[wave]: open_in_wave[wave],
                pending_names[wave]: sum(1 for d in retry_line if bisect_right(reach, d) == wave),
            }
            for names, numbers in zip(label_counters, by_label, strict=True):
                counts.update(zip(names, numbers, strict=True))
            return Look(
                state=state,
                wave=wave,
                cursor=cursor,
                reach=reach,
                wave_done_at_ms=wave_done,
                counts=counts,
                now_ms=now,
                bucket=bucket,
            )

        while outcome is None:
            step: Step
            if (
                quiet
                and state is RolloutState.RUNNING
                and (cursor < reach[wave] or retry_line)
                and failed + timed_out < gate[succeeded + failed + timed_out]
            ):
                # No limit can be crossed and the wave has devices to send (the retry line
                # holds devices of this wave only): decide's answer is its dispatch step,
                # asked for directly (the same step, checked in tests)
                step = dispatch_step(plan, reach[wave], in_flight, bucket, now)
                if self.check_steps and step != (expected := decide(plan, look_now())):
                    raise AssertionError(f"quiet look gave {step!r}, decide {expected!r}")
            else:
                step = decide(plan, look_now())
            until_ms: int | None = None
            if type(step) is Dispatch:  # the most frequent step, first
                count, upto, refilled = step.count, step.reach, step.bucket
                sent = 0
                while retry_line and sent < count:
                    device = retry_line.pop(0)
                    attempts[device] = attempts.get(device, 1) + 1
                    latency = low_ms + span_ms * random_()
                    if latency > timeout_ms:
                        result, latency = _TIMEOUT, timeout_ms
                    else:
                        result = _FAIL if never_late or device in bad_devices else _SUCCESS
                    entry = ((now + int(latency)) << _TIME_SHIFT) | (device << 2) | result
                    insort(line, entry, head)
                    if result != _SUCCESS:
                        insort(fail_line, entry, fail_head)
                    open_in_wave[bisect_right(reach, device)] += 1  # its wave
                    sent += 1
                first = cursor
                stop = min(upto, cursor + count - sent)
                if stop > first:
                    base = now << _TIME_SHIFT
                    if not fresh:
                        fresh_at = base + soonest
                    fresh += map(base.__add__, code[first:stop])
                    bad_installs += bisect_left(bad, stop) - bisect_left(bad, first)
                    lo = bisect_left(failing, first)
                    for device in failing[lo : bisect_left(failing, stop, lo)]:
                        insort(fail_line, base + code[device], fail_head)
                open_in_wave[wave] += stop - first
                sent += stop - first
                cursor = stop
                in_flight += sent
                bucket = refilled.spend(sent)
                if sent == DISPATCH_BATCH:
                    continue
                if not (refill and in_flight >= plan.policy.max_in_flight):  # type: ignore[operator]
                    until_ms = now  # the tokens are spent: look again a while later
            else:
                match step:
                    case Start():
                        state = RolloutState.RUNNING  # an approval asked for is given at once
                        continue
                    case Wait(until_ms=until_ms, bucket=waited):
                        if waited is not None:
                            bucket = waited
                    case WaveDone(at_ms=at_ms):
                        wave_done = at_ms
                        continue
                    case Advance(wave=following):
                        wave, wave_done = following, 0  # an approval asked for is given at once
                        continue
                    case Inconclusive():
                        outcome = Outcome.INCONCLUSIVE_PAUSE
                        break
                    case Breach():
                        outcome = Outcome.HALT
                        break
                    case Complete():
                        outcome = Outcome.COMPLETE
                        break
                    case _:
                        raise AssertionError(f"the simulator cannot carry out {step!r}")
            sending = bool(retry_line) or cursor < reach[wave]
            until = _NEVER
            if until_ms is not None:
                until = max(until_ms, now + LOOK_MS) if sending else until_ms
            batch = refill if sending and refill else _NEVER
            # results come in until the next look
            seen = 0
            looked = False
            last = (until + 1) << _TIME_SHIFT if until != _NEVER else _NEVER
            while True:
                if head == len(line) or line[head] >= last or line[head] >= fresh_at:
                    if fresh_at >= last or (head < len(line) and line[head] < fresh_at):
                        break  # the next look is due
                    # results sent since the last merge may come next: merge them in
                    del line[:head], fail_line[:fail_head]
                    head = fail_head = 0
                    line += fresh
                    line.sort()  # a sorted run and a short one: cheap
                    fresh.clear()
                    fresh_at = _NEVER
                    continue
                if bulk and open_in_wave[wave] == in_flight:
                    # every result in flight is of this wave: the successes up to the next
                    # failure, the batch's end or `last` change nothing a look would see
                    # unless one crosses a gate or ends the wave; those are counted one by one
                    cut = last if last < fresh_at else fresh_at
                    upto = len(line) if cut == _NEVER else bisect_left(line, cut, head)
                    room = upto - head
                    if room > _SCAN:
                        room = _SCAN
                    if room > batch - seen:
                        room = batch - seen
                    run = room
                    if fail_head < len(fail_line):  # up to the next failure or time-out
                        run = bisect_left(line, fail_line[fail_head], head, head + room) - head
                    if run >= open_in_wave[wave]:
                        run = open_in_wave[wave] - 1  # not the wave's last result
                    finished = succeeded + failed + timed_out
                    failures = failed + timed_out
                    if run > 0 and (
                        failures < gate_floor[finished + 1]
                        or failures < min(gate[finished + 1 : finished + run + 1])
                    ):
                        head += run
                        at = line[head - 1] >> _TIME_SHIFT
                        if at > now:
                            now = at
                        succeeded += run
                        in_flight -= run
                        open_in_wave[wave] -= run
                        seen += run
                        if seen >= batch:
                            looked = True
                            break
                        continue
                entry = line[head]
                head += 1
                at, device, result = entry >> _TIME_SHIFT, (entry & _DEVICE_MASK) >> 2, entry & 3
                if at > now:
                    now = at
                if result in (_FAIL, _TIMEOUT):
                    fail_head += 1  # fail_line[fail_head] was this entry
                elif result == _SUCCESS and soak_ms:  # verifying: no longer in flight, not final
                    in_flight -= 1
                    seen += 1
                    insort(line, ((at + soak_ms) << _TIME_SHIFT) | (device << 2) | _SOAKED, head)
                    if seen >= batch:
                        looked = True
                        break
                    continue
                wave_of = bisect_right(reach, device)
                open_in_wave[wave_of] -= 1
                if result == _SOAKED:  # the soak is over: the success counts now
                    result = _SUCCESS
                else:
                    in_flight -= 1
                    seen += 1
                if result == _SUCCESS:
                    succeeded += 1
                elif attempts.get(device, 1) <= retries:
                    retry_line.append(device)
                    looked = True
                    break
                elif result == _FAIL:
                    failed += 1
                else:
                    timed_out += 1
                if group_of:  # count it under its stratum's labels, as the engine does
                    crossed = False
                    for label in labels_of[group_of[device]]:
                        tally = by_label[label]
                        tally[result] += 1  # [successes, failures, time-outs]
                        crossed |= tally[1] + tally[2] >= gate[tally[0] + tally[1] + tally[2]]
                    if crossed:
                        looked = True
                        break
                finished = succeeded + failed + timed_out
                if failed + timed_out >= gate[finished] or not open_in_wave[wave_of]:
                    looked = True
                    break
                if seen >= batch:
                    looked = True
                    break
            if not looked:
                if until == _NEVER:
                    raise AssertionError("the simulated rollout waits for nothing")
                now = max(now, int(until))
        return Run(outcome, cursor, bad_installs, (now - START_MS) / 1000)
