"""Strata: the `by` entries a plan may write, and the proportional wave order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.strata import by_problem, proportional_order


def test_the_entries_a_plan_may_write() -> None:
    assert [by_problem(entry) for entry in ("model", "brand", "version", "tag:hw-")] == [None] * 4
    assert by_problem("colour") == (
        "must be model, brand, version or tag:<prefix> (such as tag:hw-)"
    )
    assert "tag prefix" in str(by_problem("tag:"))
    assert "tag prefix" in str(by_problem("tag:a b"))
    assert by_problem(3) is not None


@given(st.lists(st.integers(0, 5), max_size=300))
def test_every_prefix_holds_each_stratum_in_proportion_and_its_own_order(
    strata: list[int],
) -> None:
    order = proportional_order(strata)
    assert sorted(order) == list(range(len(strata)))
    sizes = {stratum: strata.count(stratum) for stratum in set(strata)}
    held = dict.fromkeys(sizes, 0)
    last = dict.fromkeys(sizes, -1)
    for taken, position in enumerate(order, 1):
        stratum = strata[position]
        assert position > last[stratum]  # a stratum keeps its own (hash) order
        last[stratum] = position
        held[stratum] += 1
        for other, size in sizes.items():
            share = taken * size / len(strata)
            at_least = max(share - (len(sizes) - 1), 1 if taken >= len(sizes) else 0)
            assert min(size, at_least) <= held[other] <= share + 1
