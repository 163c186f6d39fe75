"""Page tables the hardware walks in place, holding host-physical addresses (native, brute force).

In these modes the guest's page-table frames are the real ones: every entry
the guest writes is stored with its guest-physical frame replaced by the host
frame behind it, and every entry it reads comes back with the host frame
replaced by the guest frame again, so the guest sees what it wrote (plus the
accessed and dirty flags the hardware set).

**Levels.** A frame is a table at every level at which something references
it: a CR3 that holds it (at the top level; it stays a root while a CR3 holds
it, released by the guest or not), and each present non-leaf entry of a table
at level l (at level l - 1).  One frame can be a table at several levels at
once (a self-referencing PML4, a table linked from two levels); the hardware
reads the same entries at each of them.  The real entry differs from the
guest's only by gfn -> hfn, and its meaning depends on the level only when
bit 7 is set (PS at levels 2 and 3, PAT at level 1, reserved at 4 and 5).  So
an entry without bit 7 is converted once, whatever the levels, and an entry
with bit 7 gets the real entry that every level of its frame wants:

- at levels 1, 4 and 5 the entry converted (at 4 and 5 the hardware faults on
  the reserved bit whatever the address);
- at levels 2 and 3 the entry converted when the large page's host frames are
  one aligned run inside the VM (contiguous backing), else a *splinter*: the
  real entry points at hidden tables in hypervisor frames accounted to the VM
  that map the page in 4 KiB (or 2 MiB) pieces with the guest's rights.  The
  guest still reads its own entry, with the accessed flag the hardware set in
  the real one and the dirty flag of any piece; INVLPG or INVPCID of any
  address of the page removes every piece from the TLBs.  A splinter is built
  at the first fault through the entry (which tells the linear page whose
  pieces to invalidate later) and kept while the guest rewrites the entry for
  the same page.

**Entries the hardware cannot be given** are stored not present, with the
guest's value kept aside for its reads: *poisoned* (a present entry whose frame
is outside the VM or has address bits beyond MAXPHYADDR; a large page with
reserved bits over scattered frames; an entry with bit 7 in a frame no table
links, whose meaning is unknown), *waiting* (a splinter, or with overcommit a
frame the host has not given yet) and *ambiguous* (its frame's levels want
different real entries: a table linked at levels 2 and 1 holding a 2 MiB page
over scattered frames, one slot that cannot be both a 4 KiB leaf and a pointer
to hidden tables).  When the hardware faults while such entries exist, a
software walk of the guest's view decides: the guest's own page fault (with
the error code the hardware gives), the VM's termination for memory it does
not have, a waiting entry made real and the access retried, or, when the walk
succeeds through an ambiguous entry, the VM's termination with that reason
(the one case these modes cannot map; shadow and nested paging do).

**Isolation.** Real and hidden tables only ever hold the VM's frames.  Once an
entry is stored, no conversion allocates (what needs a frame waits for a
fault), so a change of levels always runs to its end, and a VM stopped at any
point leaves tables that hold its frames only.  A frame that stops being a
table at a level, or a hidden table given back, flushes the VM's cached walks
before the hardware walks again: a paging-structure cache could still use the
frame at its old level (Xen flushes the same way when a page changes type).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmmu.arch import ADDR_MASK, CR3_NOFLUSH, PTE, FrameKind, Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.hypervisor.guestwalk import software_walk
from fastmmu.hypervisor.layout import HostExhausted
from fastmmu.hypervisor.modes.base import LARGE_2M, Mode, Outcome

if TYPE_CHECKING:
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM

# Plain ints: IntFlag arithmetic is slow on the fault path.
_P = int(PTE.P)
_PS = int(PTE.PS)
_A = int(PTE.A)
_D = int(PTE.D)
_PAT_LARGE = int(PTE.PAT_LARGE)
_POINTER = int(PTE.P | PTE.RW | PTE.US | PTE.PWT | PTE.PCD | PTE.A | PTE.NX)  # what a non-leaf entry uses
_TABLE = int(PTE.P | PTE.RW | PTE.US)
LARGE_1G = 1 << 30
SPAN = {2: 512, 3: 512 * 512}  # 4 KiB frames of a large page at its level

# What an entry is to the hardware (REAL: its conversion; the others are stored not present)
REAL, POISON, WAIT, AMBIGUOUS, SPLINTER = range(5)
_KIND_NAMES = ("real", "poisoned", "waiting", "ambiguous", "splintered")

# The levels (1..5) set in a mask of bits 1..5, highest first
LEVELS = tuple(tuple(level for level in range(5, 0, -1) if mask >> level & 1) for mask in range(64))
_UPPER = 0b111100  # levels 2..5: where an entry without bit 7 links a table


class Splinter:
    """Hidden tables that give the hardware a guest large page whose host frames are not one
    aligned run: 4 KiB pieces (2 MiB pieces where a run of them is one) in hypervisor frames."""

    def __init__(self, mode: DirectMode, level: int, gfn: int) -> None:
        self.mode, self.level, self.gfn = mode, level, gfn  # gfn: the page's first guest frame
        self.tables: list[int] = []  # hypervisor frames, the one the real entry points at first
        self.holes = gfn + SPAN[level] > mode.frames  # pieces beyond the VM's memory: not present
        self.live = True

    def build(self, value: int) -> None:
        """Take the frames and fill them (HostExhausted leaves nothing taken)."""
        try:
            top = self._table()
            if self.level == 2:
                self._fill_4k(top, self.gfn, value)
            else:
                layout = self.mode.layout
                for chunk in range(512):
                    gfn = self.gfn + chunk * 512
                    if gfn >= self.mode.frames:
                        break
                    run = layout.large_run(gfn, 512) if gfn + 512 <= self.mode.frames else None
                    if run is not None:
                        self.mode.mem.write(top << 12 | chunk << 3, _leaf_2m(value, run))
                    else:
                        table = self._table()
                        self._fill_4k(table, gfn, value)
                        self.mode.mem.write(top << 12 | chunk << 3, table << 12 | _TABLE)
        except HostExhausted:
            self.release()
            raise

    def _pieces(self) -> Iterator[tuple[int, int, int]]:
        """(slot address, host frame, size in 4 KiB frames) of every piece; for a 1 GiB page the top
        table's pointers to 4 KiB tables are not pieces."""
        mem = self.mode.mem
        for table in self.tables:
            row = mem.read_frame(table)
            top_of_1g = self.level == 3 and table == self.tables[0]
            for index in map(int, np.flatnonzero(row & np.uint64(_P))):
                entry = int(row[index])
                if top_of_1g and not entry & _PS:
                    continue
                yield table << 12 | index << 3, (entry & ADDR_MASK) >> 12, 512 if top_of_1g else 1

    def refresh(self, value: int) -> None:
        """The guest rewrote its entry for the same page: its pieces get the entry's new rights."""
        write = self.mode.mem.write
        for slot, frame, size in list(self._pieces()):
            write(slot, _leaf_2m(value, frame) if size > 1 else _leaf_4k(value, frame))

    def pointer(self, value: int) -> int:
        """The real entry: the guest's rights, pointing at the top hidden table."""
        return (value & _POINTER) | self.tables[0] << 12

    def dirty(self) -> bool:
        """Whether a piece is dirty (hardware sets D in leaves only, never in the pointers)."""
        mem = self.mode.mem
        return any((mem.read_frame(table) & np.uint64(_D)).any() for table in self.tables)

    def leaf_frames(self) -> Iterator[int]:
        """The host frames the pieces map (a 2 MiB piece by its first and last frame)."""
        for _, frame, size in self._pieces():
            if size > 1:
                yield frame & ~1
                yield (frame & ~1) + size - 1
            else:
                yield frame

    def release(self) -> None:
        self.live = False
        self.mode.vm.free_hv_frames(self.tables)
        self.tables.clear()

    def _table(self) -> int:
        table = self.mode.vm.alloc_hv_frame(FrameKind.SHADOW)
        self.tables.append(table)
        return table

    def _fill_4k(self, table: int, gfn: int, value: int) -> None:
        mode = self.mode
        count = min(512, mode.frames - gfn)
        frames = mode.layout.hfns(gfn, count)
        write = mode.mem.write
        for index in range(count):
            write(table << 12 | index << 3, _leaf_4k(value, int(frames[index])))


def _leaf_4k(value: int, frame: int) -> int:
    """A 4 KiB piece of guest large-page entry ``value``: its bits, PAT moved from bit 12 to bit 7."""
    return (value & ~(ADDR_MASK | _PS)) | (value >> 12 & 1) << 7 | frame << 12


def _leaf_2m(value: int, frame: int) -> int:
    """A 2 MiB piece of guest 1 GiB-page entry ``value`` at host frame ``frame`` (aligned)."""
    return (value & ~ADDR_MASK) | (value & _PAT_LARGE) | frame << 12


class DirectMode(Mode):
    """Shared machinery of the modes whose hardware walks the guest's frames directly."""

    def __init__(self, vm: VM) -> None:
        super().__init__(vm)
        self.links: dict[int, int] = {}  # host frame -> mask of the levels (bits 1..5) it is a table at
        self.refs: dict[int, int] = {}  # frame << 3 | level -> references making it a table at that level
        self.roots: set[int] = set()  # frames loaded by CR3 and not released (one reference each)
        self.root_frame: int | None = None  # the frame the current CR3 holds (one more reference)
        self.special: dict[int, tuple[int, int]] = {}  # frame << 9 | index -> (the guest's value, kind)
        self.large: dict[int, set[int]] = {}  # frame -> indices of its present entries with bit 7
        self.splinters: dict[int, Splinter] = {}  # frame << 9 | index -> the hidden tables of that entry
        self.pieced: dict[tuple[int, int], Splinter] = {}  # (size, linear page) -> splinter whose pieces it has
        self.unresolved = 0  # special entries a hardware fault may run into (the software walk decides)
        self.walk_flushes = 0
        self.splinters_built = 0
        self.address_limit = 1 << self.mem.maxphyaddr
        # Host frame - guest frame where the layout is one run (gfn_of without the call), else None
        self._identity = self.layout.base if self.layout.base is not None and self.layout.backing == "contiguous" \
            else None
        self._identity_end = (self._identity or 0) + self.frames

    # -- what an entry is to the hardware -----------------------------------------------

    def _want(self, value: int, level: int, allocate: bool) -> tuple[int, int]:
        """(kind, real entry) for present guest entry ``value`` read at ``level`` (bit 7 matters only
        at levels 2 and 3); WAIT's second item is the splinter's level (0: a frame to back)."""
        address = value & ADDR_MASK
        if address >= self.address_limit:
            return POISON, 0  # reserved address bits: the software walk reports the RSVD fault
        gfn = address >> 12
        if level == 2 or level == 3:
            span = SPAN[level]
            base = gfn & -span
            if base + span <= self.frames:
                run = self.layout.large_run(base, span)
                if run is not None:  # one aligned run: the conversion keeps the bits below the page
                    return REAL, (value & ~ADDR_MASK) | (run + gfn - base) << 12
            if gfn & (span - 1) & ~1:  # bits below the page (but PAT) are reserved: RSVD
                return POISON, 0
            return WAIT, level
        if gfn >= self.frames:
            return POISON, 0
        if not allocate and self.layout.base is None and not self.layout.is_backed(gfn):
            return WAIT, 0  # overcommit: taking a host frame may fail, so not in the middle of a change
        return REAL, (value & ~ADDR_MASK) | self.layout.hfn(gfn) << 12

    def _decide(self, value: int, mask: int, allocate: bool) -> tuple[int, int]:
        """(kind, real entry) for guest entry ``value`` in a table at the levels of ``mask``."""
        if not value & _P:
            return REAL, value  # the hardware ignores the rest: kept verbatim
        if not value & _PS:
            return self._want(value, 1, allocate)  # the same at every level
        if not mask:
            return POISON, 0  # bit 7 in a frame no table links: its meaning is not known yet
        levels = LEVELS[mask]
        want = self._want(value, levels[0], allocate)
        for level in levels[1:]:
            if self._want(value, level, allocate) != want:
                return AMBIGUOUS, 0
        return want

    def _view(self, slot: int) -> int:
        """The guest's view of the entry at ``slot`` (frame << 9 | index)."""
        state = self.special.get(slot)
        if state is None:
            real = self.mem.read(slot << 3)
            if not real & _P:
                return real
            frame = (real & ADDR_MASK) >> 12
            identity = self._identity
            gfn = frame - identity if identity is not None and identity <= frame < self._identity_end \
                else self.layout.gfn_of(frame)
            if gfn is None:
                raise RuntimeError(f"simulator bug: real entry {real:#x} of {self.vm.name} maps a frame it "
                                   "does not own")
            return (real & ~ADDR_MASK) | gfn << 12
        value, kind = state
        if kind == SPLINTER:
            value &= ~(_A | _D)
            value |= self.mem.read(slot << 3) & _A  # the walks set A in the real entry
            if self.splinters[slot].dirty():
                value |= _D
        return value

    def _counts(self, slot: int, kind: int) -> bool:
        """Whether an entry of ``kind`` at ``slot`` is one a hardware fault may have to resolve."""
        return kind != SPLINTER or self.splinters[slot].holes

    def _put(self, frame: int, index: int, value: int, kind: int, real: int,
             splinter: Splinter | None = None) -> None:
        """Store guest entry ``value`` as ``kind``: the real entry, what is kept aside, the hidden
        tables (``splinter``, just built; the old ones are kept for the same page, else given back
        once the new entry is in place)."""
        slot = frame << 9 | index
        old_splinter = self.splinters.get(slot)
        if kind == WAIT and real and old_splinter is not None and old_splinter.level == real \
                and old_splinter.gfn == ((value & ADDR_MASK) >> 12) & -SPAN[real]:
            splinter, kind = old_splinter, SPLINTER  # the same page: its pieces take the new rights
            splinter.refresh(value)
        if splinter is not None:
            real = splinter.pointer(value)
        old = self.special.pop(slot, None)
        if old is not None and self._counts(slot, old[1]):
            self.unresolved -= 1
        self.mem.write(slot << 3, real if kind == REAL or kind == SPLINTER else 0)
        if kind != REAL:
            self.special[slot] = (value, kind)
        if splinter is not None:
            self.splinters[slot] = splinter
        elif old_splinter is not None:
            del self.splinters[slot]
        if kind != REAL and self._counts(slot, kind):
            self.unresolved += 1
        if value & _P and value & _PS:
            self.large.setdefault(frame, set()).add(index)
        else:
            indices = self.large.get(frame)
            if indices is not None:
                indices.discard(index)
                if not indices:
                    del self.large[frame]
        if old_splinter is not None and old_splinter is not splinter:
            old_splinter.release()
            self.stale_walks = True  # a paging-structure cache may still point at its tables

    def _targets(self, frame: int) -> list[int]:
        """The frames the entries of ``frame`` link as tables (present, bit 7 clear, converted)."""
        row = self.mem.read_frame(frame)
        indices = np.flatnonzero((row & np.uint64(_P | _PS)) == np.uint64(_P))
        targets = ((row[indices] & np.uint64(ADDR_MASK)) >> np.uint64(12)).tolist()
        if self.splinters:
            return [t for i, t in zip(indices.tolist(), targets, strict=True) if frame << 9 | i not in self.splinters]
        return targets

    # -- table levels ------------------------------------------------------------------

    def _ref(self, frame: int, level: int) -> None:
        key = frame << 3 | level
        count = self.refs.get(key, 0)
        self.refs[key] = count + 1
        if not count:
            self._add_level(frame, level)

    def _unref(self, frame: int, level: int) -> None:
        key = frame << 3 | level
        count = self.refs[key] - 1
        if count:
            self.refs[key] = count
            return
        del self.refs[key]
        self._drop_level(frame, level)

    def _add_level(self, frame: int, level: int) -> None:
        mask = self.links.get(frame, 0)
        new = mask | 1 << level
        self._reconvert(frame, new)  # its entries with bit 7 as the new level wants them too, first
        self.links[frame] = new
        if not mask:
            self.mem.set_kind(frame, FrameKind.GUEST_PT)
            self.on_protect(frame)
        if level >= 2:
            for target in self._targets(frame):
                self._ref(target, level - 1)

    def _drop_level(self, frame: int, level: int) -> None:
        mask = self.links[frame] & ~(1 << level)
        if mask:
            self.links[frame] = mask
        else:
            del self.links[frame]
        if level >= 2:
            for target in self._targets(frame):
                self._unref(target, level - 1)  # may change this frame's levels too (a self-reference)
        mask = self.links.get(frame, 0)
        self._reconvert(frame, mask)
        if not mask:
            self.mem.set_kind(frame, FrameKind.DATA)
            self.on_unprotect(frame)
        self.stale_walks = True

    def _reconvert(self, frame: int, mask: int) -> None:
        """Give the entries of ``frame`` with bit 7 the real entries the levels of ``mask`` want."""
        indices = self.large.get(frame)
        if not indices:
            return
        for index in sorted(indices):
            slot = frame << 9 | index
            value = self._view(slot)
            kind, real = self._decide(value, mask, False)
            state = self.special.get(slot)
            if state is None and kind == REAL and real == self.mem.read(slot << 3):
                continue
            if state is not None and state[1] == SPLINTER and kind == WAIT and real == self.splinters[slot].level:
                continue  # still the same page at the same level
            self._put(frame, index, value, kind, real)

    def on_protect(self, frame: int) -> None:
        """A frame became a live page table (brute force write-protects it)."""

    def on_unprotect(self, frame: int) -> None:
        """A frame is no longer a live page table."""

    # -- the guest's port ------------------------------------------------------------

    def _new_table(self, gfn: int) -> None:
        frame = self.layout.hfn(gfn)
        indices = set(np.flatnonzero(self.mem.read_frame(frame)).tolist())
        if self.special:
            indices.update(slot & 511 for slot in self.special if slot >> 9 == frame)
        for index in sorted(indices):
            self._store(frame, index, 0)
        self._settle()

    def _release_table(self, gfn: int) -> None:
        frame = self.layout.hfn(gfn)
        if frame in self.roots:
            self.roots.discard(frame)
            self._unref(frame, self.levels)
        self._settle()

    def _read_pte(self, table_gfn: int, index: int) -> int:
        return self._view(self.layout.hfn(table_gfn) << 9 | index)

    def _peek_pte(self, table_gfn: int, index: int) -> int:
        return DirectMode._read_pte(self, table_gfn, index)

    def _write_pte(self, table_gfn: int, index: int, value: int) -> None:
        self._store(self.layout.hfn(table_gfn), index, value)
        self._settle()

    def _clear_ptes(self, tables: np.ndarray, indices: np.ndarray) -> None:
        """Clearing leaf entries of tables that are tables at level 1 only, with no entry kept aside
        and none with bit 7: each is one store of 0 (``_store`` links and unlinks nothing)."""
        frames = self.layout.hfn_array(tables)
        unique = np.unique(frames).tolist()
        links, large = self.links, self.large
        if self.special or self.splinters or any(links.get(f, 0) & _UPPER or f in large for f in unique):
            super()._clear_ptes(tables, indices)
            return
        self._count_pt_writes(len(tables))
        self.mem.write_entries(frames << np.uint64(12) | indices.astype(np.uint64) << np.uint64(3), 0)
        self._settle()

    def _count_pt_writes(self, count: int) -> None:
        """Exits of ``count`` guest page-table writes (brute force traps them)."""

    def _store(self, frame: int, index: int, value: int) -> None:
        slot = frame << 9 | index
        mask = self.links.get(frame, 0)
        # 1. the new entry (backing its frame if need be): nothing is changed before this succeeds
        kind, real = self._decide(value, mask, True)
        # 2. what the old entry linked goes, with the slot cleared (the cascade must not count it)
        state = self.special.get(slot)
        old = self.mem.read(slot << 3) if state is None else 0
        upper = LEVELS[mask & _UPPER]
        if old & _P and not old & _PS and upper:
            if kind == REAL and real & (_P | _PS) == _P and (real ^ old) & ADDR_MASK == 0:
                self.mem.write(slot << 3, real)  # the same table, other flags: its links stay
                return
            self.mem.write(slot << 3, 0)
            target = (old & ADDR_MASK) >> 12
            for level in upper:
                self._unref(target, level - 1)
            if self.links.get(frame, 0) != mask and value & _P and value & _PS:
                kind, real = self._decide(value, self.links.get(frame, 0), False)  # the cascade changed its levels
        # 3. the new entry, then the tables it links (a self-reference counts itself at new levels)
        self._put(frame, index, value, kind, real)
        if kind == REAL and value & _P and not value & _PS:
            target = (real & ADDR_MASK) >> 12
            for level in LEVELS[self.links.get(frame, 0) & _UPPER]:
                self._ref(target, level - 1)

    def _settle(self) -> None:
        """After a port call: cached walks that may be wrong go now, before any walk."""
        if self.stale_walks:
            self.forget_cached_walks()

    def _load_cr3(self, value: int) -> None:
        frame = self.layout.hfn((value & ADDR_MASK) >> 12)
        top = self.levels
        self._ref(frame, top)  # the current CR3's reference, before the old one goes
        if frame not in self.roots:
            self.roots.add(frame)
            self._ref(frame, top)
        old, self.root_frame = self.root_frame, frame
        self.cr3 = value & ~CR3_NOFLUSH
        self.hw().mov_cr3((value & ~ADDR_MASK) | frame << 12)
        if old is not None:
            self._unref(old, top)
        self._settle()

    def _invlpg(self, va: int) -> None:
        self.hw().invlpg(va)
        if self.pieced:
            self._drop_pieces(va, None)

    def _invpcid(self, kind: int, pcid: int, va: int) -> None:
        self.hw().invpcid(kind, pcid=pcid, va=va)
        if kind == 0 and self.pieced:
            self._drop_pieces(va, pcid)

    def _drop_pieces(self, va: int, pcid: int | None) -> None:
        """INVLPG / INVPCID of ``va``: every piece of a splintered page around it goes too."""
        for size in (LARGE_2M, LARGE_1G):
            key = (size, va & ~(size - 1))
            splinter = self.pieced.get(key)
            if splinter is not None:
                self.invalidate_pieces(key[1], size, pcid)
                if not splinter.live:
                    del self.pieced[key]

    # -- the hardware side -------------------------------------------------------------

    def context(self) -> tuple[CpuState, EptConfig | None]:
        if self.root_frame is None or self.cr3 is None:
            return self.cpu_state(self.vm.idle_root()), None  # no CR3 loaded yet: nothing maps
        return self.cpu_state((self.cr3 & ~ADDR_MASK) | self.root_frame << 12), None

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        if result.status == Status.PAGE_FAULT and self.unresolved and self.cr3 is not None:
            return self._resolve(process, va, access, self.cr3)
        return super().on_fault(process, result, va, access)

    def _resolve(self, process: Process, va: int, access: int, cr3: int) -> Outcome:
        """A fault while entries the hardware cannot use exist: the guest's view (from ``cr3``) decides."""
        path: list[int] = []

        def read(gfn: int, index: int) -> int:
            if gfn >= self.frames:
                self.stop_beyond_memory(va, gfn << 12 | index << 3)
            path.append(self.layout.hfn(gfn) << 9 | index)
            return self._view(path[-1])

        walk = software_walk(read, _ignore, self.cpu_state(cr3), va, access, self.mem.maxphyaddr)
        if walk.status == Status.PAGE_FAULT:
            return self.deliver_page_fault(process, va, walk.error_code)
        if walk.status != Status.OK:
            return self.vm.terminate(f"access at {va:#x}: the guest's walk ends in {walk.status.name}")
        gpa = walk.host_address
        if gpa >> 12 >= self.frames:
            return self.stop_beyond_memory(va, gpa)
        for slot in path:
            state = self.special.get(slot)
            if state is None or state[1] == SPLINTER:
                continue
            if state[1] == AMBIGUOUS:
                frame, index = slot >> 9, slot & 511
                levels = ", ".join(map(str, LEVELS[self.links.get(frame, 0)]))
                return self.vm.terminate(
                    f"access at {va:#x} through entry {index} of guest page-table frame "
                    f"{self.layout.gfn_of(frame):#x}, a table at levels {levels} whose levels want different "
                    f"real entries for it ({state[0]:#x}): {self.name} mode cannot map it")
            self._make_real(slot, va)
        self._settle()
        return Outcome.RETRY

    def _make_real(self, slot: int, va: int) -> None:
        """Build what a waiting (or poisoned) entry on a successful walk needs, allocating now."""
        frame, index = slot >> 9, slot & 511
        value = self.special[slot][0]
        kind, real = self._decide(value, self.links.get(frame, 0), True)
        if kind == WAIT and real:
            splinter = Splinter(self, real, ((value & ADDR_MASK) >> 12) & -SPAN[real])
            splinter.build(value)  # HostExhausted: nothing taken, and the VM is stopped by the run loop
            self.splinters_built += 1
            size = LARGE_2M if real == 2 else LARGE_1G
            self.pieced[(size, va & ~(size - 1))] = splinter
            self._put(frame, index, value, SPLINTER, 0, splinter)
        elif kind == REAL:
            self._put(frame, index, value, kind, real)

    def mapped_frames(self) -> Iterator[tuple[str, int]]:
        for frame, mask in list(self.links.items()):
            row = self.mem.read_frame(frame)
            levels = LEVELS[mask]
            for index in map(int, np.flatnonzero(row & np.uint64(_P))):
                entry = int(row[index])
                splinter = self.splinters.get(frame << 9 | index)
                if splinter is not None:
                    for piece in splinter.leaf_frames():
                        yield "splinter", piece
                    continue
                target = (entry & ADDR_MASK) >> 12
                if not entry & _PS:
                    yield "real table", target  # a 4 KiB page at level 1, a table at the others
                    continue
                for level in levels:
                    span = SPAN.get(level, 1)
                    if span > 1 and not (target & ~1) % span:
                        yield "real table", target & ~1
                        yield "real table", (target & ~1) + span - 1
                    else:  # a 4 KiB page (PAT), or reserved bits that make it fault
                        yield "real table", target

    def forget_cached_walks(self) -> None:
        self.stale_walks = False
        self.walk_flushes += 1
        self.flush_vm_translations()

    def stats(self) -> dict[str, Any]:
        kinds = [kind for _, kind in self.special.values()]
        return {"page_table_frames": len(self.links), "poisoned_entries": len(kinds) - kinds.count(SPLINTER),
                "splintered_pages": kinds.count(SPLINTER), "splinters_built": self.splinters_built,
                "cached_walk_flushes": self.walk_flushes}


def _ignore(gfn: int, index: int, value: int) -> None:
    """The software walk's A/D updates: not made (the hardware makes them when it retries)."""
