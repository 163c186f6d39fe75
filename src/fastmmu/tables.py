"""Page-table builders: x86-64 page tables and EPT, written into any HostMemory.

They work on the compiled memory and on the reference one alike, through
``read``, ``write``, ``write_run`` and ``alloc_frame`` only, so a table built
in one is built word for word identically in the other.

- ``PageTable``: x86-64 paging structures (SDM Vol. 3A, 4.5).  Natively its
  tables are host frames.  As a guest's table (``ept=`` an ``EptTable``) its
  tables are guest-physical pages handed out by ``alloc_gpa()``, and every
  entry is written at the host address the EPT maps it to.
- ``EptTable``: EPT paging structures (SDM Vol. 3C, 29.3.2); its ``config``
  is the ``EptConfig`` the walkers take.

``map_range`` writes one ``write_run`` per leaf table, so mapping 16 GiB of
4 KiB pages (4 Mi entries) takes well under a second on the compiled memory.

>>> from fastmmu import HostMemory
>>> mem = HostMemory("1GiB")
>>> pt = PageTable(mem)
>>> pt.map(0x7F00_0000_0000, 0x1234_5000)
>>> hex(pt.translate(0x7F00_0000_0123))
'0x12345123'
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Literal, overload

from fastmmu.arch import (
    ADDR_MASK,
    ENTRIES_PER_TABLE,
    EPT,
    EPT_MEMTYPE_MASK,
    EPT_MEMTYPE_SHIFT,
    PAGE_SIZE,
    PTE,
    FrameKind,
    MemType,
    is_canonical,
    level_shift,
)
from fastmmu.cpu import EptConfig, _check_levels
from fastmmu.units import format_size

PAGE_SIZE_ALIASES = {"4K": 4096, "2M": 2 << 20, "1G": 1 << 30}
LEAF_LEVEL = {4096: 1, 2 << 20: 2, 1 << 30: 3}  # page size -> level of the entry that maps it
DEFAULT_FLAGS = PTE.P | PTE.RW | PTE.US
_U64 = (1 << 64) - 1


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what}: expected an integer, got {value!r}")
    value = operator.index(value)
    if not 0 <= value <= _U64:
        raise ValueError(f"{what}: expected a 64-bit unsigned value, got {value:#x}")
    return value


def _check_page_size(page_size: Any) -> int:
    size = PAGE_SIZE_ALIASES.get(page_size.upper(), 0) if isinstance(page_size, str) else page_size
    if isinstance(size, bool) or size not in LEAF_LEVEL:
        raise ValueError(f"page_size: expected 4096, 2 MiB or 1 GiB (or '4K', '2M', '1G'), got {page_size!r}")
    return int(size)


class _Tables:
    """What x86 page tables and EPT share: a radix tree of 512-entry tables in some address space."""

    levels: int
    root: int

    def __init__(self, mem: Any, levels: int) -> None:
        self.mem = mem
        _check_levels(levels, "levels")
        self.levels = int(levels)

    # -- the hooks each format defines ---------------------------------------------

    def _present(self, entry: int) -> bool:
        raise NotImplementedError

    def _table_entry(self, table: int, table_flags: int) -> int:
        raise NotImplementedError

    def _new_table(self) -> int:
        """A fresh, all-zero table; its address in the table's own space."""
        raise NotImplementedError

    def _host(self, address: int) -> int:
        """Host-physical address of ``address`` in the table's own space."""
        return address

    def _check_address(self, address: Any, what: str) -> int:
        raise NotImplementedError

    # -- traversal -------------------------------------------------------------------

    def _is_leaf(self, entry: int, level: int) -> bool:
        # The PS bit is bit 7 in both formats (PTE.PS, EPT.PS).
        return level == 1 or (level in (2, 3) and bool(entry & PTE.PS))

    def _read(self, address: int) -> int:
        return self.mem.read(self._host(address))

    def _write(self, address: int, value: int) -> None:
        self.mem.write(self._host(address), value)

    @overload
    def _table_at(self, address: int, level: int, *, create: Literal[True], table_flags: int = 0) -> int: ...
    @overload
    def _table_at(self, address: int, level: int, *, create: Literal[False], table_flags: int = 0) -> int | None: ...

    def _table_at(self, address: int, level: int, *, create: bool, table_flags: int = 0) -> int | None:
        """The table of level ``level`` on the path of ``address`` (None when absent and not created)."""
        if not 1 <= level <= self.levels:
            raise ValueError(f"level: expected 1..{self.levels}, got {level!r}")
        table = self.root
        for upper in range(self.levels, level, -1):
            slot = table + 8 * ((address >> level_shift(upper)) & 511)
            entry = self._read(slot)
            if not self._present(entry):
                if not create:
                    return None
                table = self._new_table()
                self._write(slot, self._table_entry(table, table_flags))
                continue
            if self._is_leaf(entry, upper):
                if not create:
                    return None
                size = format_size(1 << level_shift(upper))
                raise ValueError(f"{address:#x} is mapped by a {size} page (level {upper}); unmap it first")
            table = entry & ADDR_MASK
        return table

    def _leaf_slot(self, address: int) -> tuple[int, int, int] | None:
        """(address of the entry that maps ``address``, its level, its value), or None if unmapped."""
        table = self.root
        for level in range(self.levels, 0, -1):
            slot = table + 8 * ((address >> level_shift(level)) & 511)
            entry = self._read(slot)
            if not self._present(entry):
                return None
            if self._is_leaf(entry, level):
                return slot, level, entry
            table = entry & ADDR_MASK
        return None  # pragma: no cover - level 1 is always a leaf

    def _set_leaf(self, address: int, entry: int, page_size: int, table_flags: int) -> None:
        level = LEAF_LEVEL[page_size]
        table = self._table_at(address, level, create=True, table_flags=table_flags)
        slot = table + 8 * ((address >> level_shift(level)) & 511)
        if level > 1:
            old = self._read(slot)
            if self._present(old) and not self._is_leaf(old, level):
                raise ValueError(f"{address:#x}: a page table is mapped where the "
                                 f"{format_size(page_size)} page goes; unmap its pages first")
        self._write(slot, entry)

    def _set_range(self, address: int, length: int, first_entry: int, page_size: int, table_flags: int) -> None:
        """Map ``length`` bytes from ``address``: one ``write_run`` per leaf table."""
        level = LEAF_LEVEL[page_size]
        end = address + length
        entry = first_entry
        while address < end:
            table = self._table_at(address, level, create=True, table_flags=table_flags)
            index = (address >> level_shift(level)) & 511
            count = min((end - address) // page_size, ENTRIES_PER_TABLE - index)
            if level > 1:
                for i in range(count):
                    old = self._read(table + 8 * (index + i))
                    if self._present(old) and not self._is_leaf(old, level):
                        raise ValueError(f"{address + i * page_size:#x}: a page table is mapped where the "
                                         f"{format_size(page_size)} page goes; unmap its pages first")
            self.mem.write_run(self._host(table + 8 * index), count, entry, page_size)
            address += count * page_size
            entry += count * page_size

    # -- public inspection -------------------------------------------------------------

    def entry_address(self, address: int, level: int) -> int | None:
        """Address (in the table's own space) of the level-``level`` entry for ``address``; None if none."""
        address = self._check_address(address, self._what)
        table = self._table_at(address, level, create=False)
        return None if table is None else table + 8 * ((address >> level_shift(level)) & 511)

    def read_entry(self, address: int, level: int) -> int | None:
        """The level-``level`` entry for ``address`` (None when no table of that level covers it)."""
        slot = self.entry_address(address, level)
        return None if slot is None else self._read(slot)

    def write_entry(self, address: int, level: int, value: int, *, table_flags: int | None = None) -> None:
        """Store any 64-bit ``value`` (garbage included) as the level-``level`` entry for ``address``.

        Missing upper tables are created; a large page on the way is an error.
        """
        address = self._check_address(address, self._what)
        value = _check_int(value, "value")
        flags = self._default_table_flags if table_flags is None else table_flags
        table = self._table_at(address, level, create=True, table_flags=flags)
        self._write(table + 8 * ((address >> level_shift(level)) & 511), value)

    def unmap(self, address: int) -> int:
        """Clear the entry that maps ``address`` (of whatever page size); return it (0 if none)."""
        address = self._check_address(address, self._what)
        found = self._leaf_slot(address)
        if found is None:
            return 0
        slot, _, entry = found
        self._write(slot, 0)
        return entry

    def _lookup(self, address: int) -> int | None:
        found = self._leaf_slot(address)
        if found is None:
            return None
        _, level, entry = found
        size = 1 << level_shift(level)
        return (entry & ADDR_MASK & ~(size - 1)) | (address & (size - 1))

    _what = "address"
    _default_table_flags = 0


class PageTable(_Tables):
    """x86-64 page tables (4 or 5 levels) built in a HostMemory.

    Natively, tables are host frames from ``mem.alloc_frame(owner=owner, kind=kind)``
    and ``root`` is host-physical (``CpuState(cr3=pt.root)``).  With ``ept`` (an
    ``EptTable``), this is a guest's table: ``alloc_gpa()`` returns the
    guest-physical address of a fresh 4 KiB page for each table (the caller
    backs it in the EPT), ``root`` is guest-physical, and entries are written
    at the host address the EPT maps each table to.
    """

    _what = "va"
    _default_table_flags = int(DEFAULT_FLAGS)

    def __init__(self, mem: Any, levels: int = 4, *, owner: int = 0, kind: int = FrameKind.GUEST_PT,
                 ept: EptTable | None = None, alloc_gpa: Callable[[], int] | None = None) -> None:
        super().__init__(mem, levels)
        self.owner = owner
        self.kind = kind
        self.ept = ept
        if ept is not None:
            if not isinstance(ept, EptTable):
                raise TypeError(f"ept: expected an EptTable, got {type(ept).__name__}")
            if ept.mem is not mem:
                raise ValueError("ept: the EptTable lives in another HostMemory")
            if alloc_gpa is None:
                raise ValueError("alloc_gpa: a guest page table (ept=...) needs alloc_gpa, a function that "
                                 "returns the guest-physical address of a fresh page for each table")
        elif alloc_gpa is not None:
            raise ValueError("alloc_gpa: only meaningful for a guest page table (with ept=...)")
        self.alloc_gpa = alloc_gpa
        self.root = self._new_table()

    def __repr__(self) -> str:
        space = "guest-physical" if self.ept is not None else "host-physical"
        return f"PageTable(levels={self.levels}, root={self.root:#x} ({space}))"

    # -- hooks -------------------------------------------------------------------------

    def _present(self, entry: int) -> bool:
        return bool(entry & PTE.P)

    def _table_entry(self, table: int, table_flags: int) -> int:
        return table | table_flags

    def _new_table(self) -> int:
        if self.ept is None:
            return self.mem.alloc_frame(owner=self.owner, kind=self.kind) << 12
        if not callable(self.alloc_gpa):   # (a public attribute: it may have been changed since)
            raise TypeError(f"alloc_gpa: a guest page table needs a function that returns the guest-physical "
                            f"address of a fresh page, got {self.alloc_gpa!r}")
        gpa = _check_int(self.alloc_gpa(), "alloc_gpa()")
        if gpa & (PAGE_SIZE - 1):
            raise ValueError(f"alloc_gpa(): returned {gpa:#x}, which is not 4 KiB aligned")
        self.mem.write_run(self._host(gpa), ENTRIES_PER_TABLE, 0, 0)  # a reused guest page may hold data
        return gpa

    def _host(self, address: int) -> int:
        if self.ept is None:
            return address
        host = self.ept.translate(address)
        if host is None:
            raise ValueError(f"guest table page {address & ~0xFFF:#x} is not mapped by the EPT")
        return host

    def _check_address(self, address: Any, what: str) -> int:
        address = _check_int(address, what)
        if not is_canonical(address, self.levels):
            top = 47 if self.levels == 4 else 56
            raise ValueError(f"{what}: {address:#x} is not canonical for {self.levels}-level paging "
                             f"(bits 63:{top} must all equal bit {top})")
        return address

    def _check_mapping(self, va: Any, pa: Any, length: int, flags: Any, page_size: Any, table_flags: Any
                       ) -> tuple[int, int, int, int, int]:
        size = _check_page_size(page_size)
        va = self._check_address(va, "va")
        pa = _check_int(pa, "pa")
        flags = _check_int(flags, "flags")
        table_flags = _check_int(table_flags, "table_flags")
        if va & (size - 1):
            raise ValueError(f"va: {va:#x} is not aligned to the {format_size(size)} page size")
        if pa & (size - 1):
            raise ValueError(f"pa: {pa:#x} is not aligned to the {format_size(size)} page size")
        if (pa + length - 1) >> self.mem.maxphyaddr:
            raise ValueError(f"pa: {pa:#x} (+{length:#x}) is beyond MAXPHYADDR={self.mem.maxphyaddr}")
        # Flags may not overlap the frame address (bit 12 is PAT in a large-page entry).
        address_bits = ADDR_MASK & ~(PTE.PAT_LARGE if size > PAGE_SIZE else 0)
        if flags & address_bits:
            raise ValueError(f"flags: {flags:#x} sets address bits ({flags & address_bits:#x})")
        if table_flags & (ADDR_MASK | PTE.PS):
            raise ValueError(f"table_flags: {table_flags:#x} sets address bits or PS")
        last = va + length - 1
        if length and (not is_canonical(last, self.levels) or (last ^ va) >> 63):
            raise ValueError(f"va: {va:#x} + {length:#x} bytes leaves the canonical address range")
        return va, pa, int(flags | (PTE.PS if size > PAGE_SIZE else 0)), size, table_flags

    # -- public API --------------------------------------------------------------------

    def map(self, va: int, pa: int, flags: int = DEFAULT_FLAGS, *, page_size: int | str = 4096,
            table_flags: int = DEFAULT_FLAGS) -> None:
        """Map the page at ``va`` to physical ``pa`` (PS is added for a large page)."""
        size = _check_page_size(page_size)
        va, pa, flags, size, table_flags = self._check_mapping(va, pa, size, flags, size, table_flags)
        self._set_leaf(va, pa | flags, size, table_flags)

    def map_range(self, va: int, pa: int, length: int, flags: int = DEFAULT_FLAGS, *,
                  page_size: int | str = 4096, table_flags: int = DEFAULT_FLAGS) -> None:
        """Map ``length`` bytes from ``va`` to contiguous physical memory from ``pa``."""
        size = _check_page_size(page_size)
        length = _check_int(length, "length")
        if length % size:
            raise ValueError(f"length: {length:#x} is not a multiple of the {format_size(size)} page size")
        va, pa, flags, size, table_flags = self._check_mapping(va, pa, length, flags, size, table_flags)
        if length:
            self._set_range(va, length, pa | flags, size, table_flags)

    def translate(self, va: int) -> int | None:
        """Physical address ``va`` maps to, or None: a software lookup (no checks, no A/D, no counting)."""
        return self._lookup(self._check_address(va, "va"))


class EptTable(_Tables):
    """EPT paging structures (4 or 5 levels) in host frames of kind EPT.

    ``config`` is the EptConfig for the walkers; its root is this table's.
    """

    _what = "gpa"
    _default_table_flags = int(EPT.RWX)

    def __init__(self, mem: Any, levels: int = 4, *, owner: int = 0, ad: bool = False, execute_only: bool = True,
                 advanced_exit_info: bool = True) -> None:
        super().__init__(mem, levels)
        self.owner = owner
        self.root = self._new_table()
        self.config = EptConfig(root=self.root, levels=self.levels, ad=ad, execute_only=execute_only,
                                advanced_exit_info=advanced_exit_info)

    def __repr__(self) -> str:
        return f"EptTable(levels={self.levels}, root={self.root:#x}, ad={self.config.ad})"

    # -- hooks -------------------------------------------------------------------------

    def _present(self, entry: int) -> bool:
        return bool(entry & EPT.RWX)  # present iff any of R, W, X (29.3.2)

    def _table_entry(self, table: int, table_flags: int) -> int:
        return table | table_flags

    def _new_table(self) -> int:
        return self.mem.alloc_frame(owner=self.owner, kind=FrameKind.EPT) << 12

    def _check_address(self, address: Any, what: str) -> int:
        address = _check_int(address, what)
        width = 12 + 9 * self.levels
        if address >> width:
            raise ValueError(f"{what}: {address:#x} is beyond what {self.levels}-level EPT maps ({width} bits)")
        return address

    def _check_mapping(self, gpa: Any, hpa: Any, length: int, perms: Any, memtype: Any, page_size: Any
                       ) -> tuple[int, int, int, int]:
        size = _check_page_size(page_size)
        gpa = self._check_address(gpa, "gpa")
        hpa = _check_int(hpa, "hpa")
        perms = _check_int(perms, "perms")
        if isinstance(memtype, bool) or memtype not in set(MemType):
            raise ValueError(f"memtype: expected a MemType (UC 0, WC 1, WT 4, WP 5, WB 6), got {memtype!r}")
        if gpa & (size - 1):
            raise ValueError(f"gpa: {gpa:#x} is not aligned to the {format_size(size)} page size")
        if hpa & (size - 1):
            raise ValueError(f"hpa: {hpa:#x} is not aligned to the {format_size(size)} page size")
        if (hpa + length - 1) >> self.mem.maxphyaddr:
            raise ValueError(f"hpa: {hpa:#x} (+{length:#x}) is beyond MAXPHYADDR={self.mem.maxphyaddr}")
        if perms & (ADDR_MASK | EPT_MEMTYPE_MASK | EPT.PS):
            raise ValueError(f"perms: {perms:#x} sets address, memory-type or PS bits")
        if length and (gpa + length - 1) >> (12 + 9 * self.levels):
            raise ValueError(f"gpa: {gpa:#x} + {length:#x} bytes is beyond what the EPT maps")
        entry = int(perms | int(memtype) << EPT_MEMTYPE_SHIFT | (EPT.PS if size > PAGE_SIZE else 0))
        return gpa, hpa, entry, size

    # -- public API --------------------------------------------------------------------

    def map(self, gpa: int, hpa: int, perms: int = EPT.RWX, *, memtype: int = MemType.WB,
            page_size: int | str = 4096) -> None:
        """Map the guest-physical page at ``gpa`` to host-physical ``hpa`` with EPT rights ``perms``."""
        size = _check_page_size(page_size)
        gpa, hpa, entry, size = self._check_mapping(gpa, hpa, size, perms, memtype, size)
        self._set_leaf(gpa, hpa | entry, size, int(EPT.RWX))

    def map_range(self, gpa: int, hpa: int, length: int, perms: int = EPT.RWX, *, memtype: int = MemType.WB,
                  page_size: int | str = 4096) -> None:
        """Map ``length`` bytes of guest-physical memory from ``gpa`` to host memory from ``hpa``."""
        size = _check_page_size(page_size)
        length = _check_int(length, "length")
        if length % size:
            raise ValueError(f"length: {length:#x} is not a multiple of the {format_size(size)} page size")
        gpa, hpa, entry, size = self._check_mapping(gpa, hpa, length, perms, memtype, size)
        if length:
            self._set_range(gpa, length, hpa | entry, size, int(EPT.RWX))

    def translate(self, gpa: int) -> int | None:
        """Host-physical address ``gpa`` maps to, or None (a software lookup: no checks, no A/D)."""
        return self._lookup(self._check_address(gpa, "gpa"))


__all__ = ["PageTable", "EptTable", "DEFAULT_FLAGS"]
