"""The counters the Lua scripts write are named as domain/counters.py names them: the scripts
are given the names' prefixes (store/script_rules.py) and never spell one themselves."""

from __future__ import annotations

from orchestrator.domain import counters
from orchestrator.domain.plans import FailureType
from orchestrator.domain.policy import Tally
from orchestrator.domain.states import DeviceEvent, DeviceState, RolloutAction, RolloutState
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from tests.store.test_rollouts import GRANT, CreateRollout, move

D = DeviceState
F = FailureType
WAVES = 2


def domain_names(strata: tuple[str, ...] = ()) -> set[str]:
    """Every counter name the domain can give a rollout of WAVES waves (and these strata)."""
    names = {counters.total(state) for state in DeviceState}
    names |= {counters.in_wave(wave, state) for wave in range(WAVES) for state in DeviceState}
    names |= {counters.failures(kind) for kind in FailureType}
    for label in strata:
        names |= {counters.in_stratum(label, state) for state in counters.STRATIFIED_STATES}
        names |= {counters.stratum_failures(label, kind) for kind in FailureType}
    names |= {counters.base(name) for name in names if name.startswith(counters.REBASED_PREFIXES)}
    return names | set(counters.REBASED.values())


async def halt_and_resume(stores: Stores, rollout_id: str) -> None:
    """Halt the running rollout, then resume it as a person does: the policy is rebased."""
    await move(stores, rollout_id, RolloutState.RUNNING, RolloutState.HALTED)
    await stores.rollouts.change_state(
        rollout_id,
        allowed_from=[RolloutState.HALTED],
        to=RolloutState.RUNNING,
        reason="resumed",
        actor="alice",
        action=RolloutAction.RESUME,
        at="2030-01-02T03:04:05Z",
        rebase_policy=True,
    )


async def test_each_script_writes_the_counters_the_domain_names_and_reads(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    """Creation, dispatch, every kind of device event, a rebase and the rollout's end."""
    made = await create_rollout(9, [2, 9], running=True)
    rollouts, devices = stores.rollouts, stores.rollout_devices
    created = await rollouts.counts(made.id)  # rollout_create.lua
    assert created == {
        counters.total(D.PENDING): 9,
        counters.in_wave(0, D.PENDING): 2,
        counters.in_wave(1, D.PENDING): 7,
    }
    sent = await devices.dispatch(  # rollout_dispatch.lua
        made.id, count=8, reach=9, ack_deadline_ms=1_000, grant=GRANT
    )
    assert counters.by_state(await rollouts.counts(made.id)) == {
        **dict.fromkeys((state.value for state in DeviceState), 0),
        "pending": 1,
        "sent": 8,
    }
    ok, failed, rejected, wrong, late, ended, unwell, reverted = (item.device_id for item in sent)
    await devices.transitions(  # rollout_device.lua, 'events'
        [
            TransitionRequest(made.id, ok, DeviceEvent.SUCCESS, drop_deadline=True),
            TransitionRequest(made.id, failed, DeviceEvent.FAILED, drop_deadline=True),
            TransitionRequest(made.id, rejected, DeviceEvent.REJECTED, drop_deadline=True),
            TransitionRequest(
                made.id,
                wrong,
                DeviceEvent.WRONG_VERSION,
                drop_deadline=True,
                failure_type=FailureType.WRONG_VERSION.value,
            ),
            TransitionRequest(made.id, ended, DeviceEvent.KEY_CLAIMED, deadline_ms=9_000),
            TransitionRequest(
                made.id, unwell, DeviceEvent.VERIFY, heartbeat_ms=60_000, soak_ms=60_000
            ),
            TransitionRequest(
                made.id, reverted, DeviceEvent.VERIFY, heartbeat_ms=60_000, soak_ms=60_000
            ),
            TransitionRequest(
                made.id,
                unwell,
                DeviceEvent.UNHEALTHY,
                drop_deadline=True,
                failure_type=FailureType.UNHEALTHY.value,
            ),
            TransitionRequest(
                made.id,
                reverted,
                DeviceEvent.REVERTED,
                drop_deadline=True,
                failure_type=FailureType.REVERTED.value,
            ),
        ]
    )
    expired = await devices.expire(made.id, at_ms=1_000, retries=0)  # rollout_device.lua, 'due'
    assert [device_id for device_id, _ in expired] == [late]
    judged = counters.tally_of(await rollouts.counts(made.id))
    assert judged == Tally(succeeded=1, failures=dict.fromkeys(FailureType, 1))
    await halt_and_resume(stores, made.id)  # rollout_state.lua: a rebase
    rebased = await rollouts.counts(made.id)
    assert {base: rebased[counter] for counter, base in counters.REBASED.items()} == {
        counters.base(counters.total(D.SUCCEEDED)): 1,
        **{counters.base(counters.failures(kind)): 1 for kind in FailureType},
    }
    assert counters.tally_of(rebased) == Tally(succeeded=0, failures={})
    await move(stores, made.id, RolloutState.RUNNING, RolloutState.ABORTED)  # the end
    final = await rollouts.counts(made.id)
    assert {name for name, n in final.items() if n} <= domain_names()
    assert set(final) <= domain_names()
    assert sum(counters.by_state(final).values()) == 9
    # The device never sent and `ended`, both of the second wave.
    assert counters.by_state(final, 1)["cancelled"] == counters.by_state(final)["cancelled"] == 2


async def test_the_results_script_counts_each_stratum_by_the_domain_names_and_a_rebase_keeps_them(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    """Each device's labels, fixed at creation, move its stratum's counters with its own."""
    labels = (("brand=Acme", "model=A"), ("brand=Acme", "model=B"))
    made = await create_rollout(6, [6], running=True, strata=labels, stratum_of=[0, 0, 0, 1, 1, 1])
    devices = stores.rollout_devices
    await devices.dispatch(made.id, count=6, reach=6, ack_deadline_ms=1_000, grant=GRANT)
    a_ok, a_failed, a_retried, b_ok, b_rejected, _late = made.devices
    await devices.transitions(
        [
            TransitionRequest(made.id, a_ok, DeviceEvent.SUCCESS, drop_deadline=True),
            TransitionRequest(made.id, a_failed, DeviceEvent.FAILED, drop_deadline=True),
            TransitionRequest(
                made.id, a_retried, DeviceEvent.FAILED, drop_deadline=True, retries=1
            ),
            TransitionRequest(made.id, b_ok, DeviceEvent.SUCCESS, drop_deadline=True),
            TransitionRequest(made.id, b_rejected, DeviceEvent.REJECTED, drop_deadline=True),
        ]
    )
    await devices.expire(made.id, at_ms=1_000, retries=0)  # b_late and a_retried's deadline
    counts = await stores.rollouts.counts(made.id)
    assert set(counts) <= domain_names(("brand=Acme", "model=A", "model=B"))
    assert counters.strata_tallies(counts) == {
        "brand=Acme": Tally(2, {F.FAILED: 1, F.REJECTED: 1, F.TIMED_OUT: 1}),
        "model=A": Tally(1, {F.FAILED: 1}),
        "model=B": Tally(1, {F.REJECTED: 1, F.TIMED_OUT: 1}),
    }
    await halt_and_resume(stores, made.id)
    assert counters.strata_tallies(await stores.rollouts.counts(made.id)) == {}
