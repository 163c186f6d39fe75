"""shadow paging: the hardware walks hypervisor-made tables that map guest VA -> host PA."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmmu._core.paging import walk_nested
from fastmmu.arch import ADDR_MASK, CR3_NOFLUSH, CR3_PCID_MASK, PTE, Attr, FrameKind, Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.hypervisor.ept import VmEpt
from fastmmu.hypervisor.guestwalk import software_walk
from fastmmu.hypervisor.layout import HostExhausted
from fastmmu.hypervisor.modes.base import Mode, Outcome

# Plain ints: IntFlag arithmetic is slow on the fault path.
_ATTR_D = int(Attr.D)
_ATTR_FRACTURED = int(Attr.FRACTURED)
_ATTR_U = int(Attr.U)
_ATTR_W = int(Attr.W)
_ATTR_XD = int(Attr.XD)
_NX = int(PTE.NX)
_P = int(PTE.P)
_PS = int(PTE.PS)
_RW = int(PTE.RW)
_US = int(PTE.US)

if TYPE_CHECKING:
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM

_OK = Status.OK
_PAGE_FAULT = Status.PAGE_FAULT
_TABLE = int(_P | _RW | _US)
_HUGE_FRAMES = 512


class ShadowSpace:
    """One shadow address space: x86-64 tables in hypervisor frames, filled lazily."""

    def __init__(self, mode: Shadow, key: tuple[int, int]) -> None:
        self.mode = mode
        self.key = key  # (guest root frame, PCID)
        self.frames: list[int] = []
        self.pieces: dict[int, int] = {}  # guest large page base -> its size, where mapped in smaller leaves
        self.root = self._new_table()

    def _new_table(self) -> int:
        frame = self.mode.vm.alloc_hv_frame(FrameKind.SHADOW)
        self.frames.append(frame)
        self.mode.tables_built += 1
        return frame

    def map(self, va: int, frame: int, flags: int, leaf_level: int, guest_size: int = 4096) -> None:
        """Map ``va``'s page at ``leaf_level`` (1: 4 KiB, 2: 2 MiB); ``guest_size`` is the guest page's."""
        mem = self.mode.mem
        if guest_size > 1 << (12 + 9 * (leaf_level - 1)):
            self.pieces[va & ~(guest_size - 1)] = guest_size
        table = self.root
        for level in range(self.mode.levels, leaf_level, -1):
            slot = table << 12 | ((va >> (12 + 9 * (level - 1))) & 511) << 3
            entry = mem.read(slot)
            if entry & _P and not (level <= 3 and entry & _PS):
                table = (entry & ADDR_MASK) >> 12
                continue
            child = self._new_table()
            mem.write(slot, child << 12 | _TABLE)
            table = child
        size = _PS if leaf_level > 1 else 0
        mem.write(table << 12 | ((va >> (12 + 9 * (leaf_level - 1))) & 511) << 3, frame << 12 | flags | size)

    def unmap(self, va: int) -> list[tuple[int, int]]:
        """Drop the leaf that maps ``va``, whatever its size, and every piece of the guest's large page
        around ``va`` if it was mapped in pieces (INVLPG removes the whole page); the (base, size) of
        each guest page dropped in pieces, whose pieces the TLBs may hold too."""
        dropped = []
        for size, level in ((2 << 20, 1), (1 << 30, 2)):
            base = va & ~(size - 1)
            if self.pieces.get(base) == size:
                del self.pieces[base]
                dropped.append((base, size))
                table = self._table_at(base, level)
                if table is not None:
                    self.mode.mem.write_run(table << 12, 512, 0, 0)
        self._unmap_leaf(va)
        return dropped

    def _table_at(self, va: int, level: int) -> int | None:
        """The frame of the table at ``level`` on ``va``'s path, if there is one."""
        table = self.root
        for current in range(self.mode.levels, level, -1):
            entry = self.mode.mem.read(table << 12 | ((va >> (12 + 9 * (current - 1))) & 511) << 3)
            if not entry & _P or (current <= 3 and entry & _PS):
                return None
            table = (entry & ADDR_MASK) >> 12
        return table

    def _unmap_leaf(self, va: int) -> bool:
        mem = self.mode.mem
        table = self.root
        for level in range(self.mode.levels, 0, -1):
            slot = table << 12 | ((va >> (12 + 9 * (level - 1))) & 511) << 3
            entry = mem.read(slot)
            if not entry & _P:
                return False
            if level == 1 or entry & _PS:
                mem.write(slot, 0)
                return True
            table = (entry & ADDR_MASK) >> 12
        return False

    def clear(self) -> None:
        """Forget every translation (the tables below the root go back to the pool)."""
        self.mode.vm.free_hv_frames(self.frames[1:])
        del self.frames[1:]
        self.pieces.clear()
        self.mode.mem.write_run(self.root << 12, 512, 0, 0)

    def release(self) -> None:
        self.mode.vm.free_hv_frames(self.frames)
        self.frames.clear()

    def leaves(self) -> Iterator[tuple[int, int]]:
        """(leaf entry, frames it spans) of every translation held."""
        mem = self.mode.mem
        stack = [(self.root, self.mode.levels)]
        while stack:
            table, level = stack.pop()
            row = mem.read_frame(table)
            for index in map(int, (row & int(_P)).nonzero()[0]):
                entry = int(row[index])
                if level == 1 or entry & _PS:
                    yield entry, 512 ** (level - 1)
                else:
                    stack.append(((entry & ADDR_MASK) >> 12, level - 1))


class Shadow(Mode):
    """Shadow page tables (guest VA -> host PA) are what the hardware walks.

    - Traps: MOV to CR3 (``cr3_load``: a shadow-cache lookup), INVLPG and
      INVPCID (``invlpg``: the shadow entries are dropped), and every page
      fault.  Guest page-table reads and writes do not trap, so guest and
      shadow drift apart until the guest invalidates, as x86 requires it to.
    - A page fault is a *hidden fault* when the guest's own tables allow the
      access: the hypervisor walks them in software (setting the guest's
      accessed and dirty flags as the hardware would), fills the shadow and
      resumes.  Otherwise it is injected into the guest (``fault_injection``),
      whose handler fixes its tables; the retry is then a hidden fault.
    - Dirty flags stay exact: a page is mapped read-only in the shadow until
      the guest's entry is dirty, so the first write faults and sets it.
    - The hypervisor keeps: one shadow per (guest CR3 root, PCID), at most
      ``hypervisor.shadow_cache`` per VM, least recently used evicted; their
      frames come from the hypervisor's pool and are accounted.
    - VM switch: an exit and a shadow-cache lookup; with no VPID, the TLBs are
      flushed.
    - A hostile guest: shadow leaves are made from the hypervisor's software
      walk and its layout only, so whatever the guest writes it gets the
      walk's fault, a translation to its own frames, or its VM stopped for
      memory it does not have or a #GP in its kernel (a CR3 value or INVPCID
      operand that faults).  Self-referencing tables and large pages over
      scattered frames are walked as the hardware walks them.
    """

    name = "shadow"
    uses_vpid = False
    cr3_exits = True
    invalidation_exits = True

    def __init__(self, vm: VM) -> None:
        super().__init__(vm)
        self.limit = vm.machine.hypervisor.shadow_cache
        self.cache: OrderedDict[tuple[int, int], ShadowSpace] = OrderedDict()
        self.current: ShadowSpace | None = None
        self.idle: ShadowSpace | None = None
        self.tables_built = 0
        self.hits = self.misses = self.evictions = 0
        self._walk_cpu: CpuState | None = None
        # The hypervisor's map of the VM's memory, in EPT format, so that its software walks of
        # guest tables run in the compiled walker.  Overcommitted VMs have no fixed map: they use
        # the reference walker.
        self.physmap: VmEpt | None = None
        if self.layout.base is not None:
            self.physmap = VmEpt(vm, 4, max_frames=512 * 512, commit=False)
            self.physmap.map_all()

    # -- the guest's port (page-table reads and writes do not trap) -----------------

    def _load_cr3(self, value: int) -> None:
        pcide = self.vm.guest_config.pcid
        noflush = bool(value & CR3_NOFLUSH)
        value &= ~CR3_NOFLUSH
        root = (value & ADDR_MASK) >> 12
        self.layout.check(root)
        key = (root, value & CR3_PCID_MASK if pcide else 0)
        space = self.cache.get(key)
        if space is None:
            self.misses += 1
            space = self._new_space(key)
            noflush = False  # the PCID may still tag translations of an evicted shadow
        else:
            self.hits += 1
            self.cache.move_to_end(key)
            if not noflush:  # the guest asked for its non-global translations to be flushed
                space.clear()
        self.cr3, self.current = value, space
        shadow_cr3 = space.root << 12 | (key[1] if pcide else 0)
        self.hw().mov_cr3(shadow_cr3 | (CR3_NOFLUSH if noflush and pcide else 0))

    def _clear_ptes(self, tables: np.ndarray, indices: np.ndarray) -> None:
        self._store_zeros(tables, indices)  # the guest's tables are plain memory here

    def _invlpg(self, va: int) -> None:
        dropped = self.current.unmap(va) if self.current is not None else []
        super()._invlpg(va)
        for base, size in dropped:
            self.invalidate_pieces(base, size)

    def _invpcid(self, kind: int, pcid: int, va: int) -> None:
        dropped: set[tuple[int, int]] = set()
        for (_, space_pcid), space in self.cache.items():
            if kind == 0 and space_pcid == pcid:
                dropped.update(space.unmap(va))
            elif kind == 1 and space_pcid == pcid or kind in (2, 3):
                space.clear()
        super()._invpcid(kind, pcid, va)
        for base, size in sorted(dropped):
            self.invalidate_pieces(base, size, pcid)

    # -- the shadow cache ------------------------------------------------------------

    def _new_space(self, key: tuple[int, int]) -> ShadowSpace:
        while len(self.cache) >= self.limit and self._evict(switching=True):
            pass
        space = self._with_memory(lambda: ShadowSpace(self, key))
        self.cache[key] = space
        return space

    def _evict(self, *, switching: bool = False) -> bool:
        """Drop the least recently used shadow; the one in use only when the guest is leaving it."""
        for key, space in self.cache.items():
            if switching or space is not self.current:
                del self.cache[key]
                space.release()
                self.hw().flush()  # no cached walk may lead into its freed tables
                self.evictions += 1
                return True
        return False

    def _with_memory(self, make: Any) -> Any:
        """Run ``make``; when the hypervisor's pool is full, evict cached shadows and retry."""
        while True:
            try:
                return make()
            except HostExhausted:
                if not self._make_room():
                    raise

    def _make_room(self) -> bool:
        """Give frames back to the pool after ``HostExhausted``: a cached shadow, else (last resort)
        the current one's tables; False when there is nothing to give."""
        if self._evict():
            return True
        if self.current is not None and len(self.current.frames) > 1:  # last resort: start over
            self.current.clear()
            self.hw().flush()  # the TLBs and paging-structure caches still lead into them
            self.evictions += 1
            return True
        return False

    # -- the hardware side -------------------------------------------------------------

    def context(self) -> tuple[CpuState, EptConfig | None]:
        space = self.current
        if space is None:
            if self.idle is None:
                self.idle = ShadowSpace(self, (-1, 0))
            space = self.idle
        pcid = space.key[1] if self.vm.guest_config.pcid else 0
        return self.cpu_state(space.root << 12 | pcid), None

    def switch_cost(self) -> None:
        self.exit("vm_switch")
        if self.current is not None:  # the VM's shadow is found again in the cache
            self.hits += 1

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        if result.status is not _PAGE_FAULT or self.current is None or self.cr3 is None:
            return super().on_fault(process, result, va, access)
        cpu = self._walk_cpu
        if cpu is None or cpu.cr3 != self.cr3:  # the state the walks use, made once per CR3
            cpu = self._walk_cpu = self.cpu_state(self.cr3)
        if self.physmap is not None:
            walk = walk_nested(self.mem, cpu, self.physmap.config, va, access)
            gpa = walk.fault_address if walk.status is not _OK else walk.guest_physical_address
        else:
            walk = software_walk(self.read_pte, self.write_pte, cpu, va, access, self.mem.maxphyaddr)
            gpa = walk.host_address
        if walk.status is _PAGE_FAULT:
            self.exit("fault_injection")
            return self.deliver_page_fault(process, va, walk.error_code)
        if walk.status is not _OK or gpa >> 12 >= self.layout.frames:
            self.stop_beyond_memory(va, gpa)
        self.exit("hidden_fault")
        attrs = walk.attrs
        flags = _P | (_US if attrs & _ATTR_U else 0) | (_NX if attrs & _ATTR_XD else 0)
        if attrs & _ATTR_W and attrs & _ATTR_D:  # read-only until the guest's entry is dirty
            flags |= _RW
        leaf_level, frame = 1, None
        guest_size = walk.page_size
        if walk.attrs & _ATTR_FRACTURED:  # the physmap's pages are smaller than the guest's
            guest_size = self._guest_page_size(va)
        if guest_size > 4096:
            frame = self.layout.large_run((gpa >> 12) & ~(_HUGE_FRAMES - 1), _HUGE_FRAMES)
            leaf_level = 2 if frame is not None else 1
        if frame is None:
            frame = self.layout.hfn(gpa >> 12)
        space = self.current
        try:  # (not through _with_memory: no closure on the path of every fault)
            space.map(va, frame, flags, leaf_level, guest_size)
        except HostExhausted:
            if not self._make_room():
                raise
            self._with_memory(lambda: space.map(va, frame, flags, leaf_level, guest_size))
        return Outcome.RETRY

    def _guest_page_size(self, va: int) -> int:
        """The size of the guest page that maps ``va`` (its tables were just walked: they are sane)."""
        table = ((self.cr3 or 0) & ADDR_MASK) >> 12
        for level in range(self.levels, 1, -1):
            entry = Mode._read_pte(self, table, (va >> (12 + 9 * (level - 1))) & 511)
            if level <= 3 and entry & _PS:
                return 1 << (12 + 9 * (level - 1))
            table = (entry & ADDR_MASK) >> 12
        return 4096

    def destroy(self) -> None:
        if self.physmap is not None:
            self.physmap.release()
        for space in self.cache.values():
            space.release()
        if self.idle is not None:
            self.idle.release()
        self.cache.clear()
        self.current = self.idle = None

    def stats(self) -> dict[str, Any]:
        frames = sum(len(s.frames) for s in self.cache.values()) + (len(self.idle.frames) if self.idle else 0)
        return {"shadow_cache_hits": self.hits, "shadow_cache_misses": self.misses,
                "shadow_cache_evictions": self.evictions, "shadow_tables_built": self.tables_built,
                "shadow_spaces": len(self.cache), "shadow_frames": frames, "shadow_bytes": frames << 12,
                "physmap_bytes": len(self.physmap.frames) << 12 if self.physmap else 0}

    def mapped_frames(self) -> Iterator[tuple[str, int]]:
        for space in self.cache.values():
            for entry, span in space.leaves():
                frame = (entry & ADDR_MASK) >> 12
                yield "shadow", frame
                if span > 1:
                    yield "shadow", frame + span - 1
