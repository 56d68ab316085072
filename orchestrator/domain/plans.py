"""Rollout plans (ARCHITECTURE §6): the YAML contract, its models, and located errors.

The YAML keys (`bake`, `ack_timeout`, `rate`) are the contract; the Python names carry units
(`bake_s`, `ack_timeout_s`, `rate_per_s`). `parse_plan` turns any text into a Plan or a
PlanError whose every problem names file:line:column, the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.domain.devices import (
    MAX_METADATA_ENTRIES,
)
from orchestrator.domain.plan_values import (
    ACK_TIMEOUT_S,
    DEVICE_TIMEOUT_S,
    HEARTBEAT_S,
    LONGEST,
    MAX_RATE_PER_S,
    MAX_RETRIES,
    MAXIMA,
    SOAK_S,
    Confidence,
    Count,
    Duration,
    FailureRate,
    FirmwareFile,
    MetadataKey,
    MetadataValue,
    Percent,
    PlanName,
    RatePerS,
    Stratum,
    Tag,
    Text,
    Timeout,
    Version,
    WaveName,
    format_duration,
)
from orchestrator.domain.strata import MAX_BY
from orchestrator.domain.yaml_locations import (
    OTHER,
    LocatedYaml,
    Path,
    Position,
    Rule,
    YamlSyntaxError,
    load_yaml,
    render_path,
    rule_error,
    show_value,
)
from orchestrator.errors import InvalidInput

STORED = "stored plan"  # the source named by problems of a plan read back from storage


class FailureType(StrEnum):
    """The ways a device can fail a rollout; each may have its own threshold."""

    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    WRONG_VERSION = "wrong_version"
    UNHEALTHY = "unhealthy"  # during the health soak: reported unhealthy, or fell silent
    REVERTED = "reverted"  # during the health soak: reported another version than firmware's


# -- models ------------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class FirmwareSpec(_Spec):
    """The firmware to ship, and the version a device must report on success."""

    file: FirmwareFile = Field(description="An uploaded firmware file of the project")
    version: Version | None = Field(None, description="A success reporting another version fails")


class TargetSpec(_Spec):
    """Which devices the rollout may reach; every criterion must hold. Empty: all mqtt devices."""

    tags: list[Tag] = Field(default_factory=list, description="The device has all these tags")
    brand: Text | None = None
    model: Text | None = None
    devices: list[Text] = Field(default_factory=list, description="Only these device ids")
    exclude: list[Text] = Field(default_factory=list, description="Never these device ids")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_ENTRIES,
        description="The device's custom metadata holds every one of these keys and values",
    )
    versions: list[Version] = Field(
        default_factory=list,
        description="The firmware version the device last reported is one of these",
    )


class WaveSpec(_Spec):
    """One step of cumulative coverage: `devices` in total or `percent` of the target."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["devices"]}, {"required": ["percent"]}]}
    )

    name: WaveName = Field("", description="Unique in the plan; wave-N when left out")
    devices: Count | None = Field(None, description="Devices reached in total by this wave")
    percent: Percent | None = Field(None, description="Share of the target reached in total")
    bake_s: Duration = Field(
        0.0, alias="bake", description=f"Wait after the wave, then judge; at most {LONGEST}"
    )
    approval: Literal["auto", "manual"] = Field("auto", description="manual: wait for promote")

    @model_validator(mode="after")
    def _one_reach(self) -> Self:
        if self.devices is not None and self.percent is not None:
            raise rule_error([((), "sets both devices and percent; keep one of them")])
        if self.devices is None and self.percent is None:
            detail = "needs devices: N (a number of devices) or percent: P (a share of the target)"
            raise rule_error([((), detail)])
        return self


class HealthSpec(_Spec):
    """The health soak: how long a device is watched after its success, and how often it must
    report meanwhile (ARCHITECTURE §6b)."""

    soak_s: Timeout = Field(
        SOAK_S,
        alias="soak",
        description=(
            f"How long a device is watched after it reports success; at most {LONGEST}. "
            "Default 30m, or heartbeat when that is longer"
        ),
    )
    heartbeat_s: Timeout = Field(
        HEARTBEAT_S,
        alias="heartbeat",
        description=(
            "The longest silence allowed during the soak; at most soak. Default 5m, or soak "
            "when that is shorter"
        ),
    )

    @model_validator(mode="after")
    def _heartbeat(self) -> Self:
        # As the timeouts: the one left out adapts to the one written.
        written = self.model_fields_set
        if "heartbeat_s" not in written:
            _adapt(self, "heartbeat_s", min(HEARTBEAT_S, self.soak_s))
        elif "soak_s" not in written:
            _adapt(self, "soak_s", max(SOAK_S, self.heartbeat_s))
        elif self.heartbeat_s > self.soak_s:
            heartbeat, soak = map(format_duration, (self.heartbeat_s, self.soak_s))
            detail = (
                f"is {heartbeat}, longer than {OTHER} of {soak}; a silence longer than the soak "
                "could never be noticed: shorten heartbeat or lengthen soak"
            )
            raise rule_error([(("heartbeat",), detail, ("soak",))])
        return self


class PolicySpec(_Spec):
    """When to stop: failure thresholds, timeouts, retries and dispatch limits."""

    max_failure_rate: FailureRate = 0.05
    max_failure_rate_by_type: dict[FailureType, FailureRate] = Field(default_factory=dict)
    min_devices: Count = Field(1, description="Finished devices needed before judging mid-wave")
    ack_timeout_s: Timeout = Field(
        ACK_TIMEOUT_S,
        alias="ack_timeout",
        description=(
            f"No answer by then: timed_out; at most {LONGEST}. Default 10m, or device_timeout "
            "when that is shorter"
        ),
    )
    device_timeout_s: Timeout = Field(
        DEVICE_TIMEOUT_S,
        alias="device_timeout",
        description=(
            f"Not final by then: timed_out; at least ack_timeout, at most {LONGEST}. Default "
            "30m, or ack_timeout when that is longer"
        ),
    )
    retries: Annotated[int, Strict(), Field(ge=0, le=MAX_RETRIES)] = 0
    rate_per_s: RatePerS | None = Field(
        None, alias="rate", description=f"Commands per second, at most {MAX_RATE_PER_S}/s"
    )
    max_in_flight: Count | None = Field(None, description="Devices sent but not final, at most")
    on_failure: Literal["halt", "rollback"] = "halt"
    health: HealthSpec | None = Field(
        None, description="Watch each device after its success before it counts (a soak)"
    )

    by: list[Stratum] = Field(
        default_factory=list,
        max_length=MAX_BY,
        description="Also judge each stratum (model, brand, version, tag:<prefix>) on its own",
    )

    @model_validator(mode="after")
    def _unique_by(self) -> Self:
        first: dict[str, int] = {}
        rules: list[Rule] = []
        for i, entry in enumerate(self.by):
            if entry in first:
                detail = f"repeats {entry!r}, already {OTHER}; list each stratum key once"
                rules.append((("by", i), detail, ("by", first[entry])))
            first.setdefault(entry, i)
        if rules:
            raise rule_error(rules)
        return self

    confidence: Confidence | None = Field(
        None,
        description=(
            "Judge the failure rates with a sequential test at this confidence (such as 95%): "
            "a firmware failing at half a limit is halted with probability at most 1 - "
            "confidence, one failing at twice it is stopped with probability at least confidence"
        ),
    )

    @model_validator(mode="after")
    def _timeouts(self) -> Self:
        # The timeout left out adapts to the one written; only two written ones can conflict.
        written = self.model_fields_set
        if "ack_timeout_s" not in written:
            _adapt(self, "ack_timeout_s", min(ACK_TIMEOUT_S, self.device_timeout_s))
        elif "device_timeout_s" not in written:
            _adapt(self, "device_timeout_s", max(DEVICE_TIMEOUT_S, self.ack_timeout_s))
        elif self.device_timeout_s < self.ack_timeout_s:
            device, ack = map(format_duration, (self.device_timeout_s, self.ack_timeout_s))
            detail = (
                f"is {device}, shorter than {OTHER} of {ack}; device_timeout is the longer of "
                "the two waits: lengthen it or shorten ack_timeout"
            )
            raise rule_error([(("device_timeout",), detail, ("ack_timeout",))])
        return self


def _adapt(spec: _Spec, field: str, value: object) -> None:
    """Give a field left out of the plan the default that fits what the plan wrote.

    Inside the spec's own after-validator, before anyone holds the (frozen) instance.
    """
    object.__setattr__(spec, field, value)


class RollbackSpec(_Spec):
    """The firmware sent back to devices that took the new one, when the rollout fails."""

    file: FirmwareFile
    version: Version | None = None


_WHOLE = ", so that the rollout reaches the whole target"


class Plan(_Spec):
    """A rollout plan (ARCHITECTURE §6)."""

    name: PlanName
    firmware: FirmwareSpec
    target: TargetSpec = Field(default_factory=TargetSpec)
    waves: list[WaveSpec] = Field(min_length=1, max_length=50)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    rollback: RollbackSpec | None = None

    @field_validator("waves", mode="after")
    @classmethod
    def _name_waves(cls, waves: list[WaveSpec]) -> list[WaveSpec]:
        return [
            wave if wave.name else wave.model_copy(update={"name": name})
            for wave, name in zip(waves, default_wave_names([w.name for w in waves]), strict=True)
        ]

    @model_validator(mode="after")
    def _rules(self) -> Self:
        rules: list[Rule] = []
        named: dict[str, int] = {}
        for i, wave in enumerate(self.waves):
            if wave.name in named:  # both written: a default name is never one written
                detail = f"{wave.name!r} is already the name of {OTHER}; wave names must be unique"
                rules.append((("waves", i, "name"), detail, ("waves", named[wave.name], "name")))
            named.setdefault(wave.name, i)
        for reach, unit in (("percent", "%"), ("devices", " devices")):
            top: tuple[int, float] | None = None
            for i, wave in enumerate(self.waves):
                value = getattr(wave, reach)
                if value is not None and top and value < top[1]:
                    detail = f"is {show_value(value)} but {OTHER} already reached "
                    detail += f"{show_value(top[1])}{unit}; waves are cumulative, so {reach} must "
                    rules.append(
                        (("waves", i, reach), detail + "not decrease", ("waves", top[0], reach))
                    )
                elif value is not None:
                    top = (i, value)
        last = len(self.waves) - 1
        if self.waves[last].percent is None:
            detail = "cannot end the plan: the last wave must be percent: 100" + _WHOLE
            rules.append((("waves", last, "devices"), detail))
        elif self.waves[last].percent != 100:
            got = show_value(self.waves[last].percent)
            rules.append(
                (("waves", last, "percent"), f"must be 100 in the last wave{_WHOLE}; got {got}")
            )
        if self.policy.on_failure == "rollback" and self.rollback is None:
            detail = "is rollback but the plan has no rollback section; add rollback: with the "
            rules.append((("policy", "on_failure"), detail + "file to go back to, or use halt"))
        if self.rollback and self.rollback.file == self.firmware.file:
            detail = f"must differ from {OTHER}; both are {self.rollback.file!r}"
            rules.append((("rollback", "file"), detail, ("firmware", "file")))
        if rules:
            raise rule_error(rules)
        return self


def default_wave_names(written: list[str]) -> list[str]:
    """Each wave's name: the one written, else `wave-N` (N its place from 1), or `wave-N-2`,
    `wave-N-3`… when the plan wrote that name for another wave."""
    taken = {name for name in written if name}
    names = []
    for number, name in enumerate(written, 1):
        if not name:
            name, again = f"wave-{number}", 2
            while name in taken:
                name, again = f"wave-{number}-{again}", again + 1
            taken.add(name)
        names.append(name)
    return names


# -- parsing and located errors ----------------------------------------------------------------


@dataclass(frozen=True)
class PlanProblem:
    """One thing wrong with a plan, where it is written, and how to fix it."""

    source: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        if not self.line:  # read back from storage: there is no text to point into
            return f"{self.source}: {self.message}"
        return f"{self.source}:{self.line}:{self.column}: {self.message}"


class PlanError(InvalidInput):
    """A plan that cannot be used; `problems` are located, `message` has one per line."""

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        errors = [
            {
                "loc": f"{p.line}:{p.column} {p.path}".rstrip() if p.line else p.path,
                "msg": p.message,
            }
            for p in problems
        ]
        super().__init__("\n".join(str(p) for p in problems), errors=errors)

    def __reduce__(self) -> tuple[type[PlanError], tuple[list[PlanProblem]]]:
        return (type(self), (self.problems,))


_SECTIONS: dict[tuple[str, ...], type[BaseModel]] = {
    (): Plan,
    ("firmware",): FirmwareSpec,
    ("target",): TargetSpec,
    ("waves", "*"): WaveSpec,
    ("policy",): PolicySpec,
    ("policy", "health"): HealthSpec,
    ("rollback",): RollbackSpec,
}
# YAML reads `version: 2.10` as the float 2.1; in these places the text as written is meant
_TEXT_FIELDS = [
    tuple(path.split("."))
    for path in [
        "name",
        "firmware.file",
        "firmware.version",
        "rollback.file",
        "rollback.version",
        "target.brand",
        "target.model",
        "target.tags.*",
        "target.devices.*",
        "target.exclude.*",
        "target.metadata.*",
        "target.versions.*",
        "waves.*.name",
    ]
]


def _keys_of(path: Path) -> list[str]:
    """The YAML keys the mapping at `path` accepts (none when it is not a section)."""
    model = _SECTIONS.get(tuple("*" if isinstance(part, int) else str(part) for part in path))
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _located(source: str, at: Position, path: Path, message: str) -> PlanProblem:
    return PlanProblem(source, at.line, at.column, render_path(path), message)


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """The Plan in YAML or JSON `text`; PlanError with every problem located in `source`."""
    try:
        return _parse(text, source)
    except RecursionError:  # PyYAML composes recursively: thousands of nested `[`
        message = "the plan is nested too deeply to read; a plan is a few levels deep"
        raise PlanError([PlanProblem(source, 1, 1, "", message)]) from None


def _parse(text: str, source: str) -> Plan:
    try:
        located = load_yaml(text, root="the plan")
    except YamlSyntaxError as exc:
        raise PlanError([_located(source, exc.position, (), exc.message)]) from None
    problems = [_located(source, i.position, i.path, i.message) for i in located.issues]
    data, root = located.data, located.locate(())
    keys = ", ".join(_keys_of(()))
    if data is None:
        problems.append(_located(source, root, (), f"the plan is empty; write a mapping of {keys}"))
    elif not isinstance(data, dict):
        message = f"the plan must be a mapping of {keys}; got {show_value(data)}"
        problems.append(_located(source, root, (), message))
    else:
        located.keep_as_written(_TEXT_FIELDS)
        try:
            plan = Plan.model_validate(data, by_alias=True, by_name=False)
        except ValidationError as exc:
            for issue in located.explain(exc, _keys_of):
                problems.append(_located(source, issue.position, issue.path, issue.message))
        else:
            if not problems:
                return plan
    ordered = sorted(dict.fromkeys(problems), key=lambda p: (p.line, p.column))
    raise PlanError(ordered)


def stored_plan(data: object, *, as_accepted: bool = False) -> Plan:
    """A rollout's plan read back from storage (by its YAML names), validated again.

    PlanError (its problems unlocated, source `stored plan`) names what no longer holds, such as
    a value over a maximum added since the rollout started. `as_accepted` leaves the maxima out:
    for showing such a rollout, never for driving it.
    """
    context = {MAXIMA: False} if as_accepted else None
    try:
        return Plan.model_validate(data, by_alias=True, by_name=False, context=context)
    except ValidationError as exc:
        issues = LocatedYaml(data=data, root="the plan").explain(exc, _keys_of)
        problems = [PlanProblem(STORED, 0, 0, render_path(i.path), i.message) for i in issues]
        raise PlanError(problems) from None


def shown_plan(data: object) -> Plan:
    """A stored plan, to show its rollout by: as it was accepted, and without its target.

    Nothing shown comes from the target, and validating a target that lists 150,000 devices
    takes a fifth of a second, on every read of the rollout.
    """
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key != "target"}
    return stored_plan(data, as_accepted=True)


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema of the YAML form (its keys are the aliases), for editors."""
    schema = Plan.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "OTA rollout plan",
    }
