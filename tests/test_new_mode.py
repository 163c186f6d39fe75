"""A new way to virtualize memory is one module: a Mode subclass registered in MODES."""

from __future__ import annotations

import pytest

from fastmmu.comparison import compare, parse_modes
from fastmmu.hypervisor.modes import MODES
from fastmmu.hypervisor.modes.nested import Nested
from fastmmu.workloads.scenario import default_scenario


class PrefaultedNested(Nested):
    """Nested paging whose hypervisor maps the whole VM in the EPT at creation (one module's worth)."""

    name = "prefaulted_nested"

    def __init__(self, vm) -> None:
        super().__init__(vm)
        self.ept.map_all()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODES, PrefaultedNested.name, PrefaultedNested)


def test_a_registered_mode_runs_under_compare_beside_the_others(registered):
    assert parse_modes("all")[-1] == "prefaulted_nested"
    comparison = compare(default_scenario(scale=0.01), modes="nested,prefaulted_nested")
    assert list(comparison.results) == ["native", "nested", "prefaulted_nested"]
    nested, prefaulted = comparison.results["nested"], comparison.results["prefaulted_nested"]
    assert nested.stats["vm_exits"]["ept_violation"] > 0
    assert prefaulted.stats["vm_exits"]["ept_violation"] == 0  # its one difference
    assert prefaulted.stats["guest"]["page_faults"] == nested.stats["guest"]["page_faults"]
    assert prefaulted.cycles < nested.cycles


def test_an_unregistered_mode_is_an_error_naming_the_known_ones():
    from fastmmu.settings import ConfigError

    with pytest.raises(ConfigError, match="modes: unknown mode 'prefaulted_nested'; expected one of native, "
                                          "brute_force, shadow, nested"):
        parse_modes("prefaulted_nested")
