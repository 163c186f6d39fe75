"""The small nested-paging world the walker tests of both backends share."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastmmu.arch import PTE, FrameKind
from fastmmu.cpu import CpuState
from fastmmu.tables import EptTable, PageTable

URW = PTE.P | PTE.RW | PTE.US
KiB4, MiB2, GiB = 4096, 2 << 20, 1 << 30
GVA = 0x0000_7F80_0000_0000 + 0x1234_5678  # inside one 1 GiB page at a 1 GiB-aligned base
RAM = 1 << 32  # host-physical base of guest RAM (1 GiB aligned)


def nested_world(memory_class: Any, guest_levels: int = 4, ept_levels: int = 4, guest_size: int = KiB4,
                 ept_size: int = KiB4, *, ad: bool = False, leaf: int = URW) -> SimpleNamespace:
    """Guest RAM at GPA 0.. backed from host RAM; guest tables at GPA 1 MiB and up (frames on demand);
    the guest maps GVA's page to GPA 0.  ``ept`` is the EptTable, ``data`` the final GPA's page."""
    mem = memory_class("8GiB")
    ept = EptTable(mem, ept_levels, ad=ad)
    mapped = max(4 << 20, ept_size)
    ept.map_range(0, RAM, mapped, page_size=ept_size)  # the guest tables
    data = (GVA & (guest_size - 1)) & ~(ept_size - 1)  # the EPT page of the final GPA
    if data >= mapped:
        ept.map(data, RAM + data, page_size=ept_size)
    pages = iter(range(1 << 20, 4 << 20, KiB4))

    def alloc_gpa() -> int:
        gpa = next(pages)
        mem.alloc_at([(RAM + gpa) >> 12], kind=FrameKind.GUEST_PT)
        return gpa

    pt = PageTable(mem, guest_levels, ept=ept, alloc_gpa=alloc_gpa)
    pt.map(GVA & ~(guest_size - 1), 0, leaf, page_size=guest_size)
    return SimpleNamespace(mem=mem, ept=ept, pt=pt, cpu=CpuState(cr3=pt.root, levels=guest_levels),
                           data=(GVA & (guest_size - 1)) & ~0xFFF)
