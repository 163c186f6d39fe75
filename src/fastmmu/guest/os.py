"""The guest kernel: processes, demand paging, page replacement, munmap and exit.

It is deliberately small but does what makes the modes differ: it builds and
tears down real x86-64 page tables, one entry at a time, through its
``PagingPort``; it demand-pages on page faults; when its memory runs out it
replaces pages with the clock algorithm (reading and clearing accessed
flags); it invalidates after every change to a live entry (INVLPG for the
running process, INVPCID for another); and it switches processes on a
scheduler quantum with PCID-tagged, non-flushing CR3 loads.

Every decision depends only on what the guest sees (its entries, its faults),
so the same program gives the same guest-visible history in every mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastmmu.arch import ADDR_MASK, CR3_NOFLUSH, PTE, Access, PFErr
from fastmmu.guest.config import GuestConfig
from fastmmu.guest.frames import HUGE_FRAMES, FrameAllocator
from fastmmu.guest.port import PagingPort
from fastmmu.guest.resident import ResidentPages
from fastmmu.workloads.program import Accesses, Invlpg, Mmap, Munmap, Step, as_program

# Plain ints: IntFlag arithmetic is slow on the fault path.
_PFERR_ID = int(PFErr.ID)
_PFERR_P = int(PFErr.P)
_PFERR_RSVD = int(PFErr.RSVD)
_PFERR_W = int(PFErr.W)
_A = int(PTE.A)
_NX = int(PTE.NX)
_P = int(PTE.P)
_PS = int(PTE.PS)
_RW = int(PTE.RW)
_US = int(PTE.US)

TABLE_FLAGS = int(_P | _RW | _US)
TEARDOWN_CHUNK = 1 << 15  # pages an exit clears per call to the port (bounds its temporary arrays)
HUGE = 2 << 20
MAX_PCID = 4095


@dataclass
class Vma:
    base: int
    end: int
    writable: bool = True
    executable: bool = False
    huge: bool = False


@dataclass
class Page:
    """A resident page: where its leaf entry is (a view of the kernel's reverse map, ``ResidentPages``)."""

    process: Process
    va: int
    gfn: int
    huge: bool
    table: int
    index: int


@dataclass
class Process:
    pid: int
    name: str
    pcid: int
    root: int  # gfn of the top-level table
    vmas: list[Vma] = field(default_factory=list)
    kernel: GuestOS | None = field(default=None, repr=False, compare=False)
    resident: int = 0  # pages resident (their records are the kernel's: ``pages``)
    # The page addresses resident, as a 512-bit mask per 2 MiB of address space (a page is known by
    # its address: mapping an address already resident replaces that page's record)
    resident_bits: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    swapped: set[int] = field(default_factory=set)  # page vas evicted to swap
    alive: bool = True
    exit_reason: str = ""
    # the program and where it is
    steps: Iterator[Step] | None = None
    current: Accesses | None = None
    position: int = 0
    done: bool = False
    accesses_done: int = 0  # of its program, completed: where a process that was stopped stopped
    kinds_of: Accesses | None = None  # the batch whose user-mode kinds ``kinds`` holds (the run loop's)
    kinds: np.ndarray | None = None

    @property
    def pages(self) -> dict[int, Page]:
        """Page va -> resident page, in the order they were mapped (built from the kernel's records)."""
        if self.kernel is None or not self.resident:
            return {}
        return self.kernel.pages_of(self)

    def cr3(self, pcid_enabled: bool) -> int:
        return self.root << 12 | (self.pcid if pcid_enabled else 0)

    def vma_of(self, va: int) -> Vma | None:
        for vma in self.vmas:
            if vma.base <= va < vma.end:
                return vma
        return None


class GuestOS:
    """One guest kernel.  ``port`` is how it reaches its page tables (the mode's choice)."""

    def __init__(self, port: PagingPort, frames: int, config: GuestConfig | None = None,
                 *, record_faults: bool = False) -> None:
        self.port = port
        self.config = config or GuestConfig()
        reserved = self.config.reserved // 4096
        if reserved >= frames:
            raise ValueError(f"guest.reserved: {self.config.reserved} bytes leave no memory for processes")
        self.frames = FrameAllocator(reserved, frames)
        self.levels = self.config.levels
        self.processes: dict[int, Process] = {}
        self.current: Process | None = None
        self.resident = ResidentPages(frames)  # the reverse map and the clock
        self._next_pid = 1
        self._free_pcids: list[int] = []
        self._next_pcid = 1
        self.stats = {"page_faults": 0, "major_faults": 0, "evictions": 0, "pt_reads": 0, "pt_writes": 0,
                      "context_switches": 0, "segfaults": 0, "oom_kills": 0, "huge_pages": 0, "processes": 0,
                      "exits": 0, "page_tables": 0, "resident_pages": 0}
        self.fault_log: list[tuple[int, int, int]] | None = [] if record_faults else None
        self.quantum_left = 0
        self._last_pid = 0  # the pid that ran last: round robin goes on after it

    # -- the port, counted -------------------------------------------------------------

    def _read(self, table: int, index: int) -> int:
        self.stats["pt_reads"] += 1
        return self.port.read_pte(table, index)

    def _write(self, table: int, index: int, value: int) -> None:
        self.stats["pt_writes"] += 1
        self.port.write_pte(table, index, value)

    def _invalidate(self, process: Process, va: int) -> None:
        """After changing a live entry: INVLPG if it is the running process, else INVPCID."""
        if process is self.current:
            self.port.invlpg(va)
        elif self.config.pcid:
            self.port.invpcid(0, process.pcid, va)
        # without PCIDs a process that is not running has nothing cached: its CR3 load will flush

    # -- processes ---------------------------------------------------------------------

    def spawn(self, program: Any = None, *, name: str = "") -> Process:
        """A new process with an empty address space (and, optionally, its program)."""
        root = self._alloc_frame(table=True)
        if root is None:
            raise MemoryError("guest: no memory for a new process's page table")
        pcid = 0
        if self.config.pcid:
            if self._free_pcids:
                pcid = self._free_pcids.pop()
            elif self._next_pcid <= MAX_PCID:
                pcid, self._next_pcid = self._next_pcid, self._next_pcid + 1
            else:
                raise RuntimeError("guest: out of PCIDs (4095 live processes)")
            self.port.invpcid(1, pcid)  # a recycled PCID may still tag the old owner's translations
        pid, self._next_pid = self._next_pid, self._next_pid + 1
        process = Process(pid, name or f"p{pid}", pcid, root, kernel=self)
        if program is not None:
            process.steps = as_program(program).steps()
        self.processes[pid] = process
        self.stats["processes"] += 1
        return process

    def switch_to(self, process: Process) -> None:
        """A context switch: load the process's CR3 (keeping its PCID's translations)."""
        if process is self.current:
            return
        self.current = process
        self._last_pid = process.pid
        self.stats["context_switches"] += 1
        value = process.cr3(self.config.pcid)
        self.port.load_cr3(value | (CR3_NOFLUSH if self.config.pcid else 0))

    def runnable(self) -> list[Process]:
        return [p for p in self.processes.values() if p.alive and not p.done and p.steps is not None]

    def schedule(self) -> Process | None:
        """The process to run now: the current one until its quantum is used up, then the next
        runnable one in pid order (round robin)."""
        current = self.current
        if current is not None and current.alive and not current.done and self.quantum_left > 0:
            return current
        runnable = self.runnable()
        if not runnable:
            return None
        after = [p for p in runnable if p.pid > self._last_pid]
        chosen = after[0] if after else runnable[0]
        self.switch_to(chosen)
        self.quantum_left = self.config.quantum
        return chosen

    # -- mappings ----------------------------------------------------------------------

    def mmap(self, process: Process, base: int, length: int, *, writable: bool = True,
             executable: bool = False, huge: bool = False) -> None:
        if base % 4096 or length <= 0 or length % 4096:
            raise ValueError(f"mmap: base {base:#x} and length {length:#x} must be positive multiples of 4 KiB")
        end = base + length
        for vma in process.vmas:
            if vma.base < end and base < vma.end:
                raise ValueError(f"mmap: [{base:#x}, {end:#x}) overlaps [{vma.base:#x}, {vma.end:#x})")
        process.vmas.append(Vma(base, end, writable, executable, huge or self.config.huge_pages))
        process.vmas.sort(key=lambda v: v.base)

    def munmap(self, process: Process, base: int, length: int) -> None:
        """Unmap [base, base+length): free its pages, then the page tables left empty."""
        end = base + length
        for record in self._pages_in(process, base, end):
            self._unmap_page(process, record)
        process.swapped = {v for v in process.swapped if not base <= v < end}
        kept: list[Vma] = []
        for vma in process.vmas:  # cut the range out of the VMAs
            if vma.end <= base or end <= vma.base:
                kept.append(vma)
                continue
            if vma.base < base:
                kept.append(Vma(vma.base, base, vma.writable, vma.executable, vma.huge))
            if end < vma.end:
                kept.append(Vma(end, vma.end, vma.writable, vma.executable, vma.huge))
        process.vmas = kept
        mask = self._width() - 1
        lo, hi = base & mask, ((end - 1) & mask) + 1
        floor = max([v.end & mask for v in process.vmas if (v.end - 1) & mask < lo], default=0)
        ceiling = min([v.base & mask for v in process.vmas if v.base & mask >= hi], default=self._width())
        self._free_tables(process, process.root, self.levels, 0, lo, hi, floor, ceiling)

    def exit(self, process: Process, reason: str = "exit") -> None:
        """The process ends: every page and every table is freed, its PCID recycled."""
        if not process.alive:
            return
        self._unmap_all(process)
        self._free_tables(process, process.root, self.levels, 0, 0, self._width(), 0, self._width(),
                          invalidate=False)
        self._release_table(process.root)
        if self.config.pcid:
            self.port.invpcid(1, process.pcid)
            self._free_pcids.append(process.pcid)
        elif process is self.current:
            self.port.invpcid(3)
        process.alive, process.exit_reason = False, reason
        process.swapped.clear()
        process.vmas.clear()
        self.stats["exits"] += 1
        if process is self.current:
            self.current = None

    # -- demand paging -----------------------------------------------------------------

    def page_fault(self, process: Process, va: int, error_code: int) -> bool:
        """Handle a #PF of ``process`` at ``va``; True when the access can be retried."""
        self.stats["page_faults"] += 1
        if self.fault_log is not None:
            self.fault_log.append((process.pid, va, error_code))
        vma = process.vma_of(va)
        bad = (vma is None or error_code & (_PFERR_P | _PFERR_RSVD)
               or (error_code & _PFERR_W and not vma.writable)
               or (error_code & _PFERR_ID and not vma.executable))
        if bad or vma is None:
            self.stats["segfaults"] += 1
            self.exit(process, reason=f"segfault at {va:#x} (error code {error_code:#x})")
            return False
        page_va = va & ~0xFFF
        if vma.huge and self._huge_fits(vma, va) and self._map_huge(process, vma, va & ~(HUGE - 1)):
            return True
        if page_va in process.swapped:
            process.swapped.discard(page_va)
            self.stats["major_faults"] += 1
        gfn = self._alloc_frame(table=False)
        if gfn is None:
            self.stats["oom_kills"] += 1
            self.exit(process, reason="out of memory")
            return False
        slot = self._leaf_slot(process, page_va, create=True)
        if slot is None:
            self.frames.free(gfn)
            self.stats["oom_kills"] += 1
            self.exit(process, reason="out of memory (page tables)")
            return False
        table, index = slot
        self._write(table, index, gfn << 12 | self._leaf_flags(vma))
        self._track(process, gfn, page_va, table, index, False)
        return True

    def _leaf_flags(self, vma: Vma, huge: bool = False) -> int:
        flags = _P | _US | (_RW if vma.writable else 0) | (0 if vma.executable else _NX)
        return int(flags | (_PS if huge else 0))

    def _huge_fits(self, vma: Vma, va: int) -> bool:
        start = va & ~(HUGE - 1)
        return vma.base <= start and start + HUGE <= vma.end

    def _map_huge(self, process: Process, vma: Vma, start: int) -> bool:
        table = self._table_at(process, start, level=2, create=True)
        if table is None:
            return False
        index = (start >> 21) & 511
        if self._read(table, index) & _P:  # a page table is already there: stay with 4 KiB pages
            return False
        base = self.frames.alloc_huge()
        if base is None:
            return False
        self._write(table, index, base << 12 | self._leaf_flags(vma, huge=True))
        pages = set(range(start, start + HUGE, 4096))
        if process.swapped & pages:  # some of it was evicted: read back from swap
            self.stats["major_faults"] += 1
            process.swapped -= pages
        self.stats["huge_pages"] += 1
        self._track(process, base, start, table, index, True)
        return True

    def _track(self, process: Process, gfn: int, va: int, table: int, index: int, huge: bool) -> None:
        self.stats["resident_pages"] += 1
        bits, region, bit = process.resident_bits, va >> 21, 1 << ((va >> 12) & 511)
        mask = bits.get(region, 0)
        if mask & bit:  # the address is resident already (its tables were rewritten behind the kernel's
            # back): the new page takes the old one's record and place; the old frame is lost to the process
            self.resident.replace(self.resident.find(process.pid, va), gfn, table, index, huge)  # (old frame kept)
            return
        bits[region] = mask | bit
        process.resident += 1
        self.resident.add(gfn, process.pid, va, table, index, huge)

    def _untrack(self, process: Process, va: int) -> None:
        bits, region = process.resident_bits, va >> 21
        mask = bits[region] & ~(1 << ((va >> 12) & 511))
        if mask:
            bits[region] = mask
        else:
            del bits[region]

    # -- page tables -------------------------------------------------------------------

    def _table_at(self, process: Process, va: int, *, level: int, create: bool) -> int | None:
        """The frame of the table at ``level`` covering ``va`` (made on the way when ``create``)."""
        table = process.root
        stats, port = self.stats, self.port
        for current in range(self.levels, level, -1):
            index = (va >> (12 + 9 * (current - 1))) & 511
            stats["pt_reads"] += 1  # (self._read, inlined: three of these on every fault)
            entry = port.read_pte(table, index)
            if entry & _P:
                if current <= 3 and entry & _PS:
                    return None  # a large page covers it
                table = (entry & ADDR_MASK) >> 12
                continue
            if not create:
                return None
            new = self._alloc_frame(table=True)
            if new is None:
                return None
            self._write(table, index, new << 12 | TABLE_FLAGS)
            table = new
        return table

    def _leaf_slot(self, process: Process, va: int, *, create: bool) -> tuple[int, int] | None:
        table = self._table_at(process, va, level=1, create=create)
        return None if table is None else (table, (va >> 12) & 511)

    def _free_tables(self, process: Process, table: int, level: int, start: int, lo: int, hi: int,
                     floor: int, ceiling: int, invalidate: bool = True) -> None:
        """Free the page tables under ``table`` (at ``level``, mapping from ``start``) met on the way
        to [lo, hi) whose whole span lies in [floor, ceiling): the unmapped range widened to the
        neighbouring regions, so nothing they map can be in them (Linux's free_pgd_range).
        Addresses here are truncated to the paging width; invalidations use canonical ones."""
        span = 1 << (12 + 9 * (level - 1))
        first = max(0, (lo - start) // span)
        last = min(511, (hi - 1 - start) // span)
        for index in range(first, last + 1):
            base = start + index * span
            entry = self._read(table, index)
            if not entry & _P or entry & _PS:
                continue
            child = (entry & ADDR_MASK) >> 12
            if level > 2:
                self._free_tables(process, child, level - 1, base, lo, hi, floor, ceiling, invalidate)
            if floor <= base and base + span <= ceiling:
                self._write(table, index, 0)
                if invalidate:  # drops the paging-structure caches that still point at the table
                    self._invalidate(process, self._canonical(base))
                self._release_table(child)

    def _canonical(self, va: int) -> int:
        top = 12 + 9 * self.levels - 1
        return va | (((1 << 64) - 1) ^ ((1 << (top + 1)) - 1)) if va >> top & 1 else va

    def _width(self) -> int:
        return 1 << (12 + 9 * self.levels)

    def _release_table(self, gfn: int) -> None:
        self.port.release_table(gfn)
        self.frames.free(gfn)
        self.stats["page_tables"] -= 1

    # -- frames and the clock ----------------------------------------------------------

    def _alloc_frame(self, *, table: bool) -> int | None:
        gfn = self.frames.alloc()
        while gfn is None:
            if not self._evict_one():
                return None
            gfn = self.frames.alloc()
        if table:
            self.port.new_table(gfn)
            self.stats["page_tables"] += 1
        return gfn

    def _evict_one(self) -> bool:
        """The clock: a page whose accessed flag is set gets a second chance (the flag is
        cleared and the translation invalidated); the first one found clear is evicted."""
        resident = self.resident
        sweeps = 2 * resident.count + 1
        while sweeps:
            record = resident.first()
            if record is None:
                break
            sweeps -= 1
            process = self.processes[resident.owner(record)]
            table, index, huge = resident.leaf(record)
            entry = self._read(table, index)
            if entry & _A:
                self._write(table, index, entry & ~_A)
                self._invalidate(process, resident.page_va(record))
                resident.to_tail(record)
                continue
            va = resident.page_va(record)
            self._unmap_page(process, record)
            if huge:
                process.swapped.update(range(va, va + HUGE, 4096))
            else:
                process.swapped.add(va)
            self.stats["evictions"] += 1
            return True
        return False

    def _unmap_page(self, process: Process, record: int, *, invalidate: bool = True) -> None:
        resident = self.resident
        table, index, huge = resident.leaf(record)
        va, gfn = resident.page_va(record), resident.frame(record)
        self._write(table, index, 0)
        if invalidate:
            self._invalidate(process, va)
        self._untrack(process, va)
        resident.remove(record)
        process.resident -= 1
        self.stats["resident_pages"] -= 1
        if huge:
            self.frames.free_huge(gfn)
        else:
            self.frames.free(gfn)

    def _unmap_all(self, process: Process) -> None:
        """Every page of an exiting process, in the order they were mapped: its leaf entries cleared
        (through the port's ``clear_ptes``, a chunk at a time: no invalidation, the PCID goes), its
        frames freed."""
        process.resident_bits.clear()
        for records in self.resident.runs_of(process.pid, process.resident, TEARDOWN_CHUNK):
            self._unmap_run(process, records)

    def _unmap_run(self, process: Process, records: np.ndarray) -> None:
        resident = self.resident
        slots = resident.slot[records]
        gfns = resident.gfn[records]
        tables = (slots >> np.uint64(10)).astype(np.int64)
        indices = ((slots >> np.uint64(1)) & np.uint64(511)).astype(np.int64)
        self.stats["pt_writes"] += len(records)
        self.port.clear_ptes(tables, indices)
        resident.remove_many(records)
        process.resident -= len(records)
        self.stats["resident_pages"] -= len(records)
        huge = (slots & np.uint64(1)).astype(bool)
        if huge.any():
            for base in gfns[huge].tolist():
                self.frames.free_huge(base)
            gfns = gfns[~huge]
        self.frames.free_many(gfns)

    def _pages_in(self, process: Process, base: int, end: int) -> list[int]:
        """The records of ``process``'s pages that overlap [base, end), by address."""
        resident = self.resident
        records = np.flatnonzero(resident.pid[:resident.high] == process.pid)
        vas = resident.va[records]
        huge = (resident.slot[records] & np.uint64(1)).astype(bool)
        # base <= va < end, or a 2 MiB page with va < end and base < va + 2 MiB (no sum: it could wrap)
        below_end = vas <= np.uint64(min(end, 1 << 64) - 1)
        inside = below_end & ((vas >= np.uint64(base)) | (huge & (vas >= np.uint64(max(base - HUGE + 1, 0)))))
        records, vas = records[inside], vas[inside]
        return records[np.argsort(vas, kind="stable")].tolist()

    def pages_of(self, process: Process) -> dict[int, Page]:
        """Page va -> resident page of ``process``, in the order they were mapped (inspection)."""
        out: dict[int, Page] = {}
        resident = self.resident
        for record in resident.of_process(process.pid).tolist():
            table, index, huge = resident.leaf(record)
            va = resident.page_va(record)
            out[va] = Page(process, va, resident.frame(record), huge, table, index)
        return out

    # -- the program -------------------------------------------------------------------

    def next_accesses(self, process: Process, limit: int) -> tuple[Accesses, int, int] | None:
        """The next run of at most ``limit`` accesses of ``process`` (its mapping steps done on
        the way): (batch, start, stop), or None when the program has ended."""
        while True:
            if process.current is not None and process.position < len(process.current):
                start = process.position
                return process.current, start, min(len(process.current), start + limit)
            step = next(process.steps, None) if process.steps is not None else None
            if step is None:
                process.done = True
                return None
            if isinstance(step, Accesses):
                process.current, process.position = step, 0
            elif isinstance(step, Mmap):
                self.mmap(process, step.base, step.length, writable=step.writable,
                          executable=step.executable, huge=step.huge)
            elif isinstance(step, Munmap):
                self.munmap(process, step.base, step.length)
            elif isinstance(step, Invlpg):
                if self._canonical(step.va & (self._width() - 1)) == step.va:  # else a no-op, as INVLPG
                    self._invalidate(process, step.va & ~0xFFF)
            else:
                raise TypeError(f"program step: expected Accesses, Mmap, Munmap or Invlpg, "
                                f"got {type(step).__name__}")

    # -- inspection (tests and reports; not guest actions) -----------------------------

    def mappings(self, process: Process) -> dict[int, tuple[int, int]]:
        """Page va -> (guest-physical address, entry flags) from the tables as the guest sees them."""
        out: dict[int, tuple[int, int]] = {}
        peek = self.port.peek_pte
        for va, page in process.pages.items():
            entry = peek(page.table, page.index)
            out[va] = (entry & ADDR_MASK & ~((HUGE - 1) if page.huge else 0xFFF), entry & ~ADDR_MASK)
        return out


def user_kinds(kinds: np.ndarray) -> np.ndarray:
    """Access kinds of a user process: the CPL-3 bit on every access."""
    return kinds | np.uint8(Access.USER)


__all__ = ["GuestOS", "HUGE_FRAMES", "Page", "Process", "Vma", "user_kinds"]
