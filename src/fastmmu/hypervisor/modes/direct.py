"""Page tables the hardware walks in place, holding host-physical addresses (native, brute force).

In these modes the guest's page-table frames are the real ones: every entry
the guest writes is stored with its guest-physical frame replaced by the host
frame behind it, and every entry it reads comes back with the host frame
replaced by the guest frame again, so the guest sees what it wrote (plus the
accessed and dirty flags the hardware set).

Entries the host cannot express are *poisoned*: stored not-present, with the
guest's value kept aside for its reads.  That is a present entry whose frame
is outside the VM (or has address bits beyond MAXPHYADDR), or a large page
whose host frames are not one aligned, contiguous run.  When the hardware
faults on one, a software walk of the guest's view gives the architectural
outcome: the guest's own page fault, or the VM's termination for memory it
does not have.  Real tables therefore only ever hold the VM's frames.

A frame is a page table at a level: the root is loaded by CR3, and each
present non-leaf entry makes its target a table one level down.  The same
frame linked at two levels (a self-referencing or aliased table) would give
one entry two meanings; these modes stop the VM with that reason instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastmmu.arch import ADDR_MASK, PTE, FrameKind, Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.hypervisor.guestwalk import software_walk
from fastmmu.hypervisor.modes.base import Mode, Outcome

# Plain ints: IntFlag arithmetic is slow on the fault path.
_P = int(PTE.P)
_PS = int(PTE.PS)

if TYPE_CHECKING:
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM

_U64 = (1 << 64) - 1


class DirectMode(Mode):
    """Shared machinery of the modes whose hardware walks the guest's frames directly."""

    def __init__(self, vm: VM) -> None:
        super().__init__(vm)
        self.level_of: dict[int, int] = {}  # host frame -> paging level it is a table at
        self.links: dict[int, int] = {}  # host frame -> present non-leaf entries pointing at it
        self.roots: set[int] = set()  # host frames loaded by CR3 and not released
        self.poison: dict[tuple[int, int], int] = {}  # (host frame, index) -> the guest's value
        self.walk_flushes = 0
        self.address_limit = 1 << self.mem.maxphyaddr

    # -- conversion between the guest's view and the real entry ---------------------

    def _is_leaf(self, value: int, level: int) -> bool:
        return level == 1 or (level in (2, 3) and bool(value & _PS))

    def _real(self, value: int, level: int) -> int | None:
        """The real entry for guest entry ``value`` at ``level`` (None: cannot be expressed)."""
        if not value & _P:
            return value  # not present: the hardware ignores the rest, keep it verbatim
        address = value & ADDR_MASK
        if address >= self.address_limit:
            return None  # reserved address bits: the software walk reports the RSVD fault
        if level in (2, 3) and value & _PS:
            span = 512 if level == 2 else 512 * 512
            low = address & ((span << 12) - 1) & ~0x1FFF  # PAT is bit 12; bits below the page are reserved
            gfn = (address >> 12) & ~(span - 1)
            if low or gfn + span > self.layout.frames:
                return None
            frame = self.layout.large_run(gfn, span)
            if frame is None:
                return None
            return (value & ~ADDR_MASK) | (frame << 12) | (address & 0x1000)
        gfn = address >> 12
        if gfn >= self.layout.frames:
            return None
        return (value & ~ADDR_MASK) | (self.layout.hfn(gfn) << 12)

    def _guest(self, real: int, level: int) -> int:
        """The guest's view of real entry ``real``."""
        if not real & _P:
            return real
        frame = (real & ADDR_MASK) >> 12
        large = level in (2, 3) and real & _PS
        pat = frame & 1 if large else 0
        gfn = self.layout.gfn_of(frame & ~1 if large else frame)
        assert gfn is not None, "a real entry points outside its VM"
        return (real & ~ADDR_MASK) | (gfn << 12) | (pat << 12)

    # -- table levels and links -------------------------------------------------------

    def _set_level(self, frame: int, level: int) -> None:
        known = self.level_of.get(frame)
        if known == level:
            return
        if known is not None:
            self.vm.terminate(f"guest page-table frame {frame:#x} used at levels {known} and {level}: "
                              f"{self.name} mode keeps one meaning per table")
        self.level_of[frame] = level
        self.mem.set_kind(frame, FrameKind.GUEST_PT)
        # entries written before the table was linked were read as level 1 (bit 7 ones poisoned)
        waiting = [(index, value) for (f, index), value in self.poison.items() if f == frame]
        if level >= 2:
            row = self.mem.read_frame(frame)
            waiting += [(index, self._guest(int(row[index]), 1)) for index in map(int, (row & int(_P)).nonzero()[0])]
        for index, value in waiting:
            self._store(frame, index, value, level, old=0)

    def _link(self, frame: int, level: int) -> None:
        self._set_level(frame, level)
        count = self.links.get(frame, 0)
        self.links[frame] = count + 1
        if count == 0:
            self.on_protect(frame)

    def _unlink(self, frame: int) -> None:
        count = self.links.get(frame, 0) - 1
        if count > 0:
            self.links[frame] = count
            return
        self.links.pop(frame, None)
        if frame not in self.roots:
            self._forget_level(frame)

    def _forget_level(self, frame: int) -> None:
        """``frame`` is no longer a table at its level.  Paging-structure caches may still hold it
        at that level, while its entries are no longer converted for it (a PAT bit would be read as
        PS): the cached walks of this VM go before the hardware walks again (as Xen flushes when a
        page changes type)."""
        if self.level_of.pop(frame, None) is not None:
            self.on_unprotect(frame)
            self.stale_walks = True

    def on_protect(self, frame: int) -> None:
        """A frame became a live page table (brute force write-protects it)."""

    def on_unprotect(self, frame: int) -> None:
        """A frame is no longer a live page table."""

    # -- the guest's port ------------------------------------------------------------

    def release_table(self, gfn: int) -> None:
        frame = self.layout.hfn(gfn)
        self.roots.discard(frame)
        if not self.links.get(frame):
            self._forget_level(frame)
            self.mem.set_kind(frame, FrameKind.DATA)

    def read_pte(self, table_gfn: int, index: int) -> int:
        frame = self.layout.hfn(table_gfn)
        poisoned = self.poison.get((frame, index))
        if poisoned is not None:
            return poisoned
        return self._guest(self.mem.read(frame << 12 | index << 3), self.level_of.get(frame, 1))

    def write_pte(self, table_gfn: int, index: int, value: int) -> None:
        if not 0 <= value <= _U64:
            raise ValueError(f"write_pte: {value!r} is not a 64-bit entry")
        frame = self.layout.hfn(table_gfn)
        old = self.mem.read(frame << 12 | index << 3)
        self._store(frame, index, value, self.level_of.get(frame, 1), old=old)

    def _store(self, frame: int, index: int, value: int, level: int, *, old: int) -> None:
        key = (frame, index)
        was_poisoned = self.poison.pop(key, None) is not None
        if not was_poisoned and old & _P and not self._is_leaf(old, level) and frame in self.level_of:
            self._unlink((old & ADDR_MASK) >> 12)
        known = frame in self.level_of
        # bit 7 means PS or PAT depending on the level: in a frame not linked yet, wait to know
        real = self._real(value, level) if known or not (value & _P and value & _PS) else None
        if real is None:
            self.poison[key] = value
            real = value & ~(_P | ADDR_MASK) & _U64
        self.mem.write(frame << 12 | index << 3, real)
        if real & _P and not self._is_leaf(real, level) and known:
            self._link((real & ADDR_MASK) >> 12, level - 1)

    def load_cr3(self, value: int) -> None:
        self.check_cr3(value)
        frame = self._root_frame(value)
        self.roots.add(frame)
        self._set_level(frame, self.levels)
        if frame not in self.links:
            self.on_protect(frame)
        self.cr3 = value & ~(1 << 63)
        self.hw().mov_cr3(self._real_cr3(value))

    def _root_frame(self, value: int) -> int:
        gfn = (value & ADDR_MASK) >> 12
        return self.layout.hfn(gfn)  # outside the VM: GuestMemoryError stops it

    def _real_cr3(self, value: int) -> int:
        return (value & ~ADDR_MASK) | (self._root_frame(value) << 12)

    # -- the hardware side -------------------------------------------------------------

    def context(self) -> tuple[CpuState, EptConfig | None]:
        cr3 = (self.cr3 & ~ADDR_MASK) | (self._root_frame(self.cr3) << 12) if self.cr3 else self.vm.idle_root()
        return self.cpu_state(cr3), None

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        if result.status == Status.PAGE_FAULT and self.poison:
            return self._resolve_poison(process, result, va, access)
        return super().on_fault(process, result, va, access)

    def _resolve_poison(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        """A fault while poisoned entries exist: the guest's view decides what it really is."""
        walk = software_walk(self.peek_pte, lambda gfn, index, value: None, self.cpu_state(self.cr3),
                             va, access, self.mem.maxphyaddr)
        if walk.status == Status.PAGE_FAULT:
            return self.deliver_page_fault(process, va, walk.error_code)
        gpa = walk.host_address
        if gpa >> 12 >= self.layout.frames:
            self.vm.terminate(f"access at {va:#x} to guest-physical address {gpa:#x}, beyond the VM's memory")
        self.vm.terminate(f"access at {va:#x} through a guest large page at {gpa:#x} that {self.name} mode "
                          "cannot map (its host frames are not contiguous)")
        raise AssertionError("unreachable")

    def mapped_frames(self) -> Iterator[tuple[str, int]]:
        for frame, level in list(self.level_of.items()):
            row = self.mem.read_frame(frame)
            for index in map(int, (row & int(_P)).nonzero()[0]):
                entry = int(row[index])
                if self._is_leaf(entry, level):
                    size = 1 if level == 1 else 512 ** (level - 1)
                    base = (entry & ADDR_MASK) >> 12
                    if level > 1:
                        base &= ~1
                    yield "real table", base
                    if size > 1:
                        yield "real table", base + size - 1
                else:
                    yield "real table (table)", (entry & ADDR_MASK) >> 12

    def forget_cached_walks(self) -> None:
        self.stale_walks = False
        self.walk_flushes += 1
        mmu = self.hw()
        if self.uses_vpid:
            mmu.invvpid(1, vpid=self.vm.vpid)
        else:
            mmu.flush()

    def stats(self) -> dict[str, Any]:
        return {"page_table_frames": len(self.level_of), "poisoned_entries": len(self.poison),
                "cached_walk_flushes": self.walk_flushes}
