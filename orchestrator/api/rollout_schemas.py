"""The rollout routes' bodies: a rollout's view, its dry run (and simulation), devices, events.

Same rules as `api/schemas.py` (pydantic at the edge, no service imports), whose `Reply` and
`Strict` they build on; read by the API, the client and the CLI.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, WithJsonSchema

from orchestrator.api.schemas import Reply, Strict
from orchestrator.domain.plans import FailureType
from orchestrator.domain.states import OPERATOR_ACTIONS, DeviceState, RolloutState

COUNTS_TEXT = "Devices by state: every device state is a key (zeros included); they add up"


class FirmwareOut(Reply):
    file: str
    version: str | None = None


class WaveOut(Reply):
    """One wave of a rollout: how many devices it reaches in all, and where they are."""

    name: str
    target: int = Field(description="Devices reached in total once this wave is done (cumulative)")
    counts: dict[str, int] = Field(description=COUNTS_TEXT + " to this wave's new devices")


OperatorAction = Annotated[
    str,
    WithJsonSchema({"type": "string", "enum": sorted(action.value for action in OPERATOR_ACTIONS)}),
]


class StratumOut(Reply):
    """One stratum of a rollout with policy.by, as its failure policy judges it."""

    stratum: str = Field(description="Its label: model=TH-300, tag:hw-=hw-rev2")
    finished: int = Field(description="Its devices finished (succeeded or failed) so far")
    failed: int = Field(description="Its failures so far, every type")
    failure_rate: float = Field(description="failed / finished (0..1)")


class RolloutOut(Reply):
    """A rollout: its state and why, the current wave, counts, and the failure rate."""

    id: str
    name: str
    state: RolloutState
    reason: str = Field(description="Why the rollout is in this state")
    wave: str = Field(description="The current wave's name")
    wave_index: int = Field(description="The current wave's position, from 0")
    waves: list[WaveOut]
    counts: dict[str, int] = Field(description=COUNTS_TEXT + " to total")
    failure_rate: float = Field(description="Failures / finished devices so far (0..1)")
    failures: dict[str, int] = Field(
        default_factory=dict,
        description="The failures the rate counts, by failure type (unhealthy, reverted…)",
    )
    max_failure_rate: float = Field(description="The plan's policy.max_failure_rate (0..1)")
    evidence: str | None = Field(
        None,
        description=(
            "With policy.confidence: where the sequential test of max_failure_rate stands, "
            "in words (its log-likelihood ratio and bounds)"
        ),
    )
    created_at: str
    updated_at: str
    created_by: str = Field(description="The name of the API key that created it")
    firmware: FirmwareOut
    rollback: FirmwareOut | None = Field(description="The plan's rollback firmware, if any")
    total: int = Field(description="Devices in the rollout")
    actions: list[OperatorAction] = Field(description="The operator actions the state allows now")
    strata: list[StratumOut] = Field(
        default_factory=list,
        description="With policy.by: each stratum with a finished device, as the policy judges "
        "it (since the last resume of a halt, like failure_rate)",
    )


class WavePreview(Reply):
    name: str
    devices: int = Field(description="Devices this wave adds")
    reach: int = Field(description="Devices reached in total once this wave is done")
    approval: str = Field(description="manual: the wave waits for promote")
    bake: str = Field(description="How long to wait after the wave before judging it")
    strata: dict[str, int] = Field(
        default_factory=dict,
        description="With policy.by: the devices this wave adds, by stratum (model=TH-300)",
    )


class ExclusionOut(Reply):
    device_id: str
    reason: str
    detail: str = Field(description="More about the reason, e.g. the other rollout's id")
    why: str = Field(description="The reason in words")


class SimulationOut(Reply):
    """The plan run many times against a synthetic fleet (`simulate=true`)."""

    runs: int
    devices: int = Field(description="The fleet's size: the devices the plan reaches now")
    failure_rate: float = Field(description="The fleet's true failure rate")
    p_halt: float = Field(description="Share of runs halted (or rolled back)")
    p_complete: float
    p_inconclusive_pause: float = Field(description="Share of runs paused at a wave's end")
    reached_mean: float = Field(description="Devices sent the firmware, on average")
    reached_p95: int
    bad_installs_mean: float = Field(description="Reached devices the firmware fails on")
    bad_installs_p95: int
    duration_s_mean: float


class RolloutPreview(Reply):
    """A dry run: the waves and exclusions the plan resolves to now; nothing is started."""

    dry_run: Literal[True] = True
    name: str
    total: int
    waves: list[WavePreview]
    exclusions: list[ExclusionOut]
    versions: dict[str, int] = Field(
        default_factory=dict,
        description="The target's devices by the firmware version they last reported "
        "((none): never reported one)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the plan may not do as meant, such as a stratum its first wave does "
        "not reach or a first wave too small for its gate",
    )
    simulation: SimulationOut | None = Field(
        None, description="With simulate=true: the plan's simulated outcomes"
    )


class RolloutDeviceOut(Reply):
    device_id: str
    state: DeviceState
    wave: str
    command_id: str | None = Field(description="The command last sent to the device")
    attempts: int = Field(description="How many times the firmware was sent to the device")
    failure: FailureType | None = Field(description="How the device failed, if it did")
    error: str | None = Field(
        None,
        description="The device's last error, in its words (`silent`: no health report in time)",
    )
    updated_at: str | None = Field(description="When the device's state last changed")


class RolloutEvent(Reply):
    """One entry of a rollout's audit trail (more fields may appear)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    at: str = ""
    actor: str = ""
    action: str = ""
    from_state: str | None = Field(default=None, alias="from")
    to: str | None = None
    reason: str = ""
    details: dict[str, JsonValue] | None = Field(
        default=None, description="The figures behind the change (counts, rates), if any"
    )


class RolloutActionRequest(Strict):
    """An operator action's optional body."""

    reason: str | None = Field(
        default=None, min_length=1, max_length=500, description="Recorded in the audit trail"
    )
