"""The counters the Lua scripts write are named as domain/counters.py names them: the scripts
are given the names' prefixes (store/script_rules.py) and never spell one themselves."""

from __future__ import annotations

from orchestrator.domain import counters
from orchestrator.domain.plans import FailureType
from orchestrator.domain.policy import Tally
from orchestrator.domain.states import DeviceEvent, DeviceState, RolloutState
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from tests.store.test_rollouts import GRANT, CreateRollout, move

D = DeviceState
WAVES = 2


def domain_names() -> set[str]:
    """Every counter name the domain can give a rollout of WAVES waves."""
    names = {counters.total(state) for state in DeviceState}
    names |= {counters.in_wave(wave, state) for wave in range(WAVES) for state in DeviceState}
    names |= {counters.failures(kind) for kind in FailureType}
    return names | set(counters.REBASED.values())


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
    await move(stores, made.id, RolloutState.RUNNING, RolloutState.HALTED)
    await rollouts.change_state(  # rollout_state.lua: a rebase
        made.id,
        allowed_from=[RolloutState.HALTED],
        to=RolloutState.RUNNING,
        reason="resumed",
        actor="alice",
        action="resume",
        at="2030-01-02T03:04:05Z",
        rebase_policy=True,
    )
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
