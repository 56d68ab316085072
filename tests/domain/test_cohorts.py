"""Cohort selection and wave sizes: deterministic, AND-ed targets, reported exclusions."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.cohorts import (
    CohortBuilder,
    DeviceInfo,
    ExclusionReason,
    order_key,
    select,
    wave_reach,
    wave_sizes,
)
from orchestrator.domain.plans import TargetSpec, WaveSpec


def device(device_id: str, **fields: object) -> DeviceInfo:
    values: dict[str, object] = {
        "source": "mqtt",
        "tags": frozenset({"thermostat", "eu"}),
        "brand": "Acme",
        "model": "TH-200",
        **fields,
    }
    return DeviceInfo(id=device_id, **values)  # type: ignore[arg-type]


def test_no_target_takes_every_eligible_device() -> None:
    cohort = select("r", TargetSpec(), [device("a"), device("b"), device("c", source="http")])
    assert sorted(cohort.device_ids) == ["a", "b"]
    assert [(e.device_id, e.reason) for e in cohort.exclusions] == [
        ("c", ExclusionReason.HTTP_ONLY)
    ]


def test_every_criterion_must_hold() -> None:
    fleet = [
        device("match"),
        device("other-tag", tags=frozenset({"thermostat"})),
        device("other-brand", brand="Zeta"),
        device("other-model", model="TH-100"),
    ]
    target = TargetSpec(tags=["thermostat", "eu"], brand="Acme", model="TH-200")
    assert select("r", target, fleet).device_ids == ["match"]


def test_explicit_devices_are_still_anded_and_unknown_ones_reported() -> None:
    target = TargetSpec(devices=["a", "b", "ghost"], brand="Acme")
    cohort = select("r", target, [device("a"), device("b", brand="Zeta"), device("c")])
    assert cohort.device_ids == ["a"]
    assert [(e.device_id, e.reason) for e in cohort.exclusions] == [
        ("ghost", ExclusionReason.NOT_FOUND)
    ]


def test_exclusions_carry_their_reason() -> None:
    fleet = [
        device("excluded"),
        device("http", source="http"),
        device("picky", allowed_commands=("reboot",)),
        device("busy", active_rollout="rollout-1"),
        device("ok", allowed_commands=("reboot", "download_firmware")),
    ]
    cohort = select("r", TargetSpec(exclude=["excluded"]), fleet)
    assert cohort.device_ids == ["ok"]
    reasons = {e.device_id: e.reason for e in cohort.exclusions}
    assert reasons == {
        "excluded": ExclusionReason.EXCLUDED_BY_PLAN,
        "http": ExclusionReason.HTTP_ONLY,
        "picky": ExclusionReason.COMMAND_NOT_ALLOWED,
        "busy": ExclusionReason.IN_ACTIVE_ROLLOUT,
    }
    busy = next(e for e in cohort.exclusions if e.device_id == "busy")
    assert busy.detail == "rollout-1"


def test_order_is_deterministic_per_rollout_name_and_independent_of_input_order() -> None:
    fleet = [device(f"d{i}") for i in range(50)]
    first = select("thermostat-2.1.0", TargetSpec(), fleet).device_ids
    again = select("thermostat-2.1.0", TargetSpec(), list(reversed(fleet))).device_ids
    other = select("thermostat-2.2.0", TargetSpec(), fleet).device_ids
    assert first == again
    assert sorted(first) == sorted(other)
    assert first != other
    assert first != sorted(first)  # spread, not in id order


def test_waves_reach_counts_and_percentages_cumulatively() -> None:
    waves = [
        WaveSpec(devices=10),
        WaveSpec(percent=10),
        WaveSpec(percent=50),
        WaveSpec(percent=100),
    ]
    assert wave_reach(waves, 1000) == [10, 100, 500, 1000]
    assert wave_sizes(waves, 1000) == [10, 90, 400, 500]
    # A canary larger than 10% of a small fleet: the 10% wave adds nothing.
    assert wave_reach(waves, 50) == [10, 10, 25, 50]
    assert wave_reach(waves, 5) == [5, 5, 5, 5]
    assert wave_reach(waves, 0) == [0, 0, 0, 0]


def test_a_small_percentage_of_a_small_fleet_is_still_one_device() -> None:
    assert wave_reach([WaveSpec(percent=1), WaveSpec(percent=100)], 7) == [1, 7]


wave_specs = st.lists(
    st.one_of(
        st.integers(min_value=1, max_value=5000).map(lambda n: WaveSpec(devices=n)),
        st.floats(min_value=0.01, max_value=100).map(lambda p: WaveSpec(percent=p)),
    ),
    min_size=1,
    max_size=8,
)


@given(waves=wave_specs, total=st.integers(min_value=0, max_value=100_000))
def test_reach_is_monotone_bounded_and_ends_at_the_total(waves: list[WaveSpec], total: int) -> None:
    reach = wave_reach(waves, total)
    assert len(reach) == len(waves)
    assert all(a <= b for a, b in itertools.pairwise(reach))
    assert all(0 <= n <= total for n in reach)
    assert reach[-1] == total
    assert sum(wave_sizes(waves, total)) == total


def test_a_cohort_built_a_page_at_a_time_is_the_cohort_selected_at_once() -> None:
    """Thousands of devices (several sorted runs to merge) in pages of any size."""
    fleet = [
        device(f"dev-{n:05d}", source="http" if n % 7 == 0 else "mqtt", tags=frozenset({"t"}))
        for n in range(2500)
    ]
    target = TargetSpec(
        tags=["t"],
        devices=[f"dev-{n:05d}" for n in range(0, 5000, 2)],  # half of them do not exist
        exclude=[f"dev-{n:05d}" for n in range(0, 2500, 10)],
    )
    at_once = select("fw-2", target, fleet)
    for size in (1, 333, 1000, 2500):
        builder = CohortBuilder("fw-2", target)
        for start in range(0, len(fleet), size):
            builder.add(fleet[start : start + size])
        assert builder.cohort() == at_once
    assert at_once.device_ids == sorted(at_once.device_ids, key=lambda d: order_key("fw-2", d))
    reasons = [(e.reason, e.device_id) for e in at_once.exclusions]
    assert reasons == sorted(reasons)
    assert {e.reason for e in at_once.exclusions} == {
        ExclusionReason.EXCLUDED_BY_PLAN,
        ExclusionReason.HTTP_ONLY,
        ExclusionReason.NOT_FOUND,
    }
    assert sum(e.reason == ExclusionReason.NOT_FOUND for e in at_once.exclusions) == 1250


def test_a_metadata_target_takes_only_devices_holding_every_pair() -> None:
    fleet = [
        device("berlin-2", metadata={"site": "berlin", "floor": "2"}),
        device("berlin-3", metadata={"site": "berlin", "floor": "3"}),
        device("paris-2", metadata={"site": "paris", "floor": "2"}),
        device("none"),
    ]
    berlin = TargetSpec(metadata={"site": "berlin"})
    assert sorted(select("r", berlin, fleet).device_ids) == ["berlin-2", "berlin-3"]
    both = TargetSpec(metadata={"site": "berlin", "floor": "2"}, brand="Acme")
    assert select("r", both, fleet).device_ids == ["berlin-2"]
    assert select("r", TargetSpec(metadata={"site": ""}), fleet).device_ids == []


# --- strata (policy.by) -----------------------------------------------------------------------


def fleet_of_models(sizes: dict[str, int]) -> list[DeviceInfo]:
    return [
        device(f"{model}-{n}", model=model) for model, size in sizes.items() for n in range(size)
    ]


def test_without_by_the_order_is_the_hash_order_it_always_was() -> None:
    fleet = fleet_of_models({"TH-200": 30, "TH-300": 5})
    plain = select("r", TargetSpec(), fleet)
    assert plain.device_ids == sorted((d.id for d in fleet), key=lambda i: order_key("r", i))
    assert (plain.strata, plain.stratum_of) == ([], [])


def test_waves_take_every_stratum_in_proportion_and_the_first_devices_one_of_each() -> None:
    sizes = {"TH-100": 600, "TH-200": 300, "TH-300": 90, "TH-400": 10}
    cohort = select("r", TargetSpec(), fleet_of_models(sizes), by=["model"])
    models = [cohort.strata[i][0] for i in cohort.stratum_of]
    assert sorted(models[:4]) == [f"model={m}" for m in sizes]
    # Within one device of its share, but for the one device each stratum has first: a
    # prefix may hold up to (strata - 1) devices fewer of a big stratum than its share.
    for prefix in (4, 10, 50, 100, 333, 1000):
        for model, size in sizes.items():
            held = models[:prefix].count(f"model={model}")
            share = prefix * size / 1000
            assert held >= 1, (prefix, model)
            assert share - (len(sizes) - 1) <= held <= share + 1, (prefix, model)
    for model in sizes:  # each stratum keeps its own hash order
        ids = [i for i in cohort.device_ids if i.startswith(model)]
        assert ids == sorted(ids, key=lambda i: order_key("r", i))


def test_stratified_order_is_deterministic_and_covers_the_same_devices() -> None:
    fleet = fleet_of_models({"A": 7, "B": 3})
    first = select("r", TargetSpec(), fleet, by=["model"])
    again = select("r", TargetSpec(), list(reversed(fleet)), by=["model"])
    assert first == again
    assert sorted(first.device_ids) == sorted(d.id for d in fleet)


def test_stratum_labels_of_every_kind_and_the_none_stratum() -> None:
    fleet = [
        device("a", tags=frozenset({"hw-2", "hw-1", "eu"}), version="2.0.3"),
        device("b", tags=frozenset({"eu"}), brand="Zeta"),
    ]
    cohort = select("r", TargetSpec(), fleet, by=["brand", "tag:hw-", "version"])
    by_id = dict(zip(cohort.device_ids, (cohort.strata[i] for i in cohort.stratum_of), strict=True))
    assert by_id == {
        "a": ("brand=Acme", "tag:hw-=hw-1", "version=2.0.3"),
        "b": ("brand=Zeta", "tag:hw-=(none)", "version=(none)"),
    }


def test_a_target_selects_on_the_last_reported_version() -> None:
    fleet = [device("old", version="2.0.3"), device("new", version="2.1.0"), device("never")]
    cohort = select("r", TargetSpec(versions=["2.0.3", "2.0.4"]), fleet)
    assert cohort.device_ids == ["old"]
