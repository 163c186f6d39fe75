"""Processor state that decides how an address is translated: paging controls and EPT.

Both backends (the compiled core and the reference model) take these plain
objects; the compiled core copies them into C structs once per call, so a
batch of millions of accesses pays for the conversion once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastmmu.arch import ADDR_MASK, CR3_NOFLUSH, CR3_PCID_MASK, EPTP_AD, EPTP_WALK_SHIFT, MemType


def _check_levels(levels: int, what: str) -> None:
    if levels not in (4, 5):
        raise ValueError(f"{what}: expected 4 or 5 paging levels, got {levels!r}")


def _check_address(value: int, what: str, maxphyaddr: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what}: expected a non-negative integer address, got {value!r}")
    if value & ~ADDR_MASK & ~0xFFF or value >> maxphyaddr:
        raise ValueError(f"{what}: {value:#x} sets bits beyond MAXPHYADDR={maxphyaddr}")


@dataclass
class CpuState:
    """Control-register state of one logical processor (SDM Vol. 3A, 2.5 and 4.1).

    >>> cpu = CpuState(cr3=0x1000, cr0_wp=True, efer_nxe=True, cr4_smep=True)
    >>> cpu.root, cpu.pcid
    (4096, 0)
    """

    cr3: int = 0
    levels: int = 4
    cr0_wp: bool = True
    efer_nxe: bool = True
    cr4_pge: bool = True
    cr4_pcide: bool = False
    cr4_smep: bool = False
    cr4_smap: bool = False
    cr4_pke: bool = False
    eflags_ac: bool = False
    pkru: int = 0

    def __post_init__(self) -> None:
        _check_levels(self.levels, "levels")
        if not 0 <= self.pkru < 1 << 32:
            raise ValueError(f"pkru: expected a 32-bit value, got {self.pkru!r}")
        if self.cr3 & CR3_NOFLUSH:
            raise ValueError("cr3: bit 63 (no-flush) is an operand of MOV to CR3, not CR3 state")

    @property
    def root(self) -> int:
        """Physical address of the top-level table (host-physical natively, guest-physical in a VM)."""
        return self.cr3 & ADDR_MASK

    @property
    def pcid(self) -> int:
        return self.cr3 & CR3_PCID_MASK if self.cr4_pcide else 0

    def validate(self, maxphyaddr: int) -> None:
        """Reject a CR3 that MOV to CR3 would refuse (#GP) on this memory's MAXPHYADDR."""
        _check_address(self.cr3 & ~CR3_PCID_MASK, "cr3", maxphyaddr)


@dataclass
class EptConfig:
    """The EPT pointer and the EPT features in use (SDM Vol. 3C, 25.6.11 and 29.3).

    ``eptag`` names this EPT in translation caches (the SDM's EP4TA); by
    default it is derived from the root frame.
    """

    root: int
    levels: int = 4
    ad: bool = False
    execute_only: bool = True
    advanced_exit_info: bool = True
    memtype: int = MemType.WB
    eptag: int = field(default=0)

    def __post_init__(self) -> None:
        _check_levels(self.levels, "EPT levels")
        if self.memtype not in (MemType.UC, MemType.WB):
            raise ValueError(f"EPT memtype: the EPTP allows UC (0) or WB (6), got {self.memtype!r}")
        if self.root & 0xFFF:
            raise ValueError(f"EPT root: {self.root:#x} is not 4 KiB aligned")
        if not self.eptag:
            self.eptag = (self.root >> 12) % 0xFFFF_FFFF + 1  # unique per root frame below 2^32 - 1
        if not 0 < self.eptag < 1 << 32:
            raise ValueError(f"eptag: expected 1..2^32-1, got {self.eptag!r}")

    @property
    def eptp(self) -> int:
        """The 64-bit EPTP value this configuration stands for."""
        return self.root | (self.levels - 1) << EPTP_WALK_SHIFT | (EPTP_AD if self.ad else 0) | self.memtype

    @classmethod
    def from_eptp(cls, eptp: int, **features: bool) -> EptConfig:
        """Decode an EPTP value (other features as keywords)."""
        return cls(
            root=eptp & ADDR_MASK,
            levels=((eptp >> EPTP_WALK_SHIFT) & 7) + 1,
            ad=bool(eptp & EPTP_AD),
            memtype=eptp & 7,
            **features,
        )

    def validate(self, maxphyaddr: int) -> None:
        _check_address(self.root, "EPT root", maxphyaddr)
