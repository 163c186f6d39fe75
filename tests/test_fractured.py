"""Pieces of a larger page in the TLB (SDM Vol. 3A 4.10.2.3, 4.10.4.1).

A guest 2 MiB page mapped by 4 KiB EPT pages is cached as 4 KiB pieces.  INVLPG (and INVPCID or
INVVPID of one address) of any address of that page must remove all of them: "the processor
determines the page that contains that address and flushes all TLB entries for that page".  Both
backends mark the pieces (``Attr.FRACTURED``) and remove every piece of the context on such an
invalidation; entries that are not pieces go only when they cover the address.
"""

from __future__ import annotations

import numpy as np
import pytest
from worlds import GVA, KiB4, MiB2, nested_world

from fastmmu._core.memory import HostMemory as CompiledMemory
from fastmmu._core.mmu import MMU as CompiledMMU
from fastmmu.arch import Attr
from fastmmu.reference.memory import HostMemory as ReferenceMemory
from fastmmu.reference.mmu import MMU as ReferenceMMU
from fastmmu.tlbconfig import TLBConfig

BASE = GVA & ~(MiB2 - 1)


@pytest.fixture(params=["compiled", "reference"])
def backend(request):
    return (CompiledMemory, CompiledMMU) if request.param == "compiled" else (ReferenceMemory, ReferenceMMU)


def world(backend, ept_size):
    memory_class, mmu_class = backend
    w = nested_world(memory_class, guest_size=MiB2, ept_size=ept_size)
    w.ept.map_range(0, 1 << 32, MiB2, page_size=ept_size)  # the whole guest 2 MiB page
    cpu = w.cpu
    cpu.cr4_pcide = True
    mmu = mmu_class(w.mem, tlb=TLBConfig.skylake(), cpu=cpu, ept=w.ept.config, vpid=3)
    return w, mmu


def pieces(mmu):
    return [(name, row["vpn"]) for name, t in mmu.structures().items() if name.startswith(("l1", "l2"))
            for row in t.contents() if row["attrs"] & Attr.FRACTURED]


def touch(mmu, offsets):
    addresses = np.array([BASE + o for o in offsets], dtype=np.uint64)
    assert mmu.translate(addresses).complete


@pytest.mark.parametrize("invalidate", ["invlpg", "invpcid", "invvpid"])
def test_invalidating_one_address_of_a_fractured_page_removes_every_piece(backend, invalidate):
    _, mmu = world(backend, KiB4)
    touch(mmu, [0, 5 * KiB4, 300 * KiB4])
    assert len({vpn for _, vpn in pieces(mmu)}) == 3  # three 4 KiB pieces of one 2 MiB page
    if invalidate == "invlpg":
        mmu.invlpg(BASE)
    elif invalidate == "invpcid":
        mmu.invpcid(0, pcid=0, va=BASE)
    else:
        mmu.invvpid(0, vpid=3, va=BASE)
    assert pieces(mmu) == []
    walks = mmu.counters()["walks"]
    touch(mmu, [300 * KiB4])
    assert mmu.counters()["walks"] == walks + 1  # the far piece is walked again


def test_pieces_of_another_context_stay(backend):
    _, mmu = world(backend, KiB4)
    touch(mmu, [0, 7 * KiB4])
    mmu.invvpid(0, vpid=4, va=BASE)  # another VM's address
    assert len(pieces(mmu)) >= 2


def test_a_whole_large_page_is_no_piece(backend):
    _, mmu = world(backend, MiB2)
    touch(mmu, [0, 300 * KiB4])
    assert pieces(mmu) == []
    rows = [row for name, t in mmu.structures().items() if name.startswith("l2") for row in t.contents()]
    assert rows and all(row["size"] == "2M" for row in rows)
    mmu.invlpg(BASE + 300 * KiB4)  # any address of the page removes the 2 MiB entry
    assert not [row for name, t in mmu.structures().items() if name.startswith(("l1", "l2"))
                for row in t.contents()]
