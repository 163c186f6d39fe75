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


class VMEntryFailure(ValueError):
    """A VM entry failed the checks on its VM-execution control fields (SDM Vol. 3C 27.2.1.1): the
    processor does not enter the guest (VM-entry failure, VM-instruction error 7, "invalid control
    field").  Raised, with the field and its value in the message, by every API that takes an EPTP
    or an ``EptConfig`` into the core, before anything runs."""


# EPTP bits (SDM Vol. 3C 25.6.11): 2:0 memory type, 5:3 page-walk length - 1, 6 A/D enable,
# 7 supervisor shadow-stack control (not modelled: reserved here), 11:8 reserved, N-1:12 the root,
# 63:N reserved (N = MAXPHYADDR).
EPTP_SSS = 1 << 7
EPTP_RESERVED_LOW = 0xF00
EPTP_RESERVED_HIGH = ~((1 << 52) - 1) & ((1 << 64) - 1)
_VALID_EPT_MEMTYPES = (MemType.UC, MemType.WB)


def _eptp_failure(what: str) -> VMEntryFailure:
    return VMEntryFailure(f"VM entry failed (invalid control field): EPTP {what}")


@dataclass
class EptConfig:
    """The EPT pointer and the EPT features of the processor (SDM Vol. 3C, 25.6.11 and 29.3).

    ``root``, ``levels``, ``ad`` and ``memtype`` are the EPTP's fields; ``execute_only``,
    ``ad_supported``, ``five_level_supported`` and ``advanced_exit_info`` say what the processor
    supports (IA32_VMX_EPT_VPID_CAP bits 0, 21, 7 and 22).  An EPTP the processor would refuse at VM
    entry raises ``VMEntryFailure``, here and again in every API that takes the configuration into
    the core (its fields are mutable).  ``eptag`` names this EPT in translation caches (the SDM's
    EP4TA); by default it is derived from the root frame.
    """

    root: int
    levels: int = 4
    ad: bool = False
    execute_only: bool = True
    advanced_exit_info: bool = True
    memtype: int = MemType.WB
    eptag: int = field(default=0)
    ad_supported: bool = True
    five_level_supported: bool = True

    def __post_init__(self) -> None:
        self._check_fields()
        if not self.eptag:
            self.eptag = (self.root >> 12) % 0xFFFF_FFFF + 1  # unique per root frame below 2^32 - 1
        if isinstance(self.eptag, bool) or not isinstance(self.eptag, int) or not 0 < self.eptag < 1 << 32:
            raise ValueError(f"eptag: expected 1..2^32-1, got {self.eptag!r}")

    def _check_fields(self) -> None:
        """The VM-entry checks of the EPTP's fields that do not depend on MAXPHYADDR."""
        levels, memtype, root = self.levels, self.memtype, self.root
        if isinstance(levels, bool) or levels not in (4, 5):
            raise _eptp_failure(f"page-walk length (bits 5:3 + 1): {levels!r} levels; expected 4 or 5")
        if levels == 5 and not self.five_level_supported:
            raise _eptp_failure("page-walk length (bits 5:3 + 1): 5 levels, which this processor does not "
                                "support (five_level_supported=False); expected 4")
        if isinstance(memtype, bool) or memtype not in _VALID_EPT_MEMTYPES:
            raise _eptp_failure(f"memory type (bits 2:0): {memtype!r}; expected UC (0) or WB (6)")
        if self.ad and not self.ad_supported:
            raise _eptp_failure("bit 6 (accessed and dirty flags) set, which this processor does not support "
                                "(ad_supported=False)")
        if isinstance(root, bool) or not isinstance(root, int) or root < 0:
            raise _eptp_failure(f"address (root): {root!r}; expected a non-negative integer")
        if root & 0xFFF:
            raise _eptp_failure(f"address (root): {root:#x} is not 4 KiB aligned (EPTP bits 11:0 are its fields)")
        if root & EPTP_RESERVED_HIGH:
            raise _eptp_failure(f"reserved bits 63:52 set: {root & EPTP_RESERVED_HIGH:#x}")

    @property
    def eptp(self) -> int:
        """The 64-bit EPTP value this configuration stands for."""
        return self.root | (self.levels - 1) << EPTP_WALK_SHIFT | (EPTP_AD if self.ad else 0) | self.memtype

    @classmethod
    def from_eptp(cls, eptp: int, **features: bool) -> EptConfig:
        """Decode an EPTP value (the processor's features as keywords).

        Every field is checked as VM entry checks it: reserved bits 11:8 and 63:52, bit 7
        (supervisor shadow-stack control, not supported here), the memory type, the page-walk
        length and A/D enable (``VMEntryFailure``); bits 51:MAXPHYADDR of the root are checked
        against the memory the configuration is used with (``validate``).
        """
        if isinstance(eptp, bool) or not isinstance(eptp, int) or not 0 <= eptp < 1 << 64:
            raise _eptp_failure(f"value: {eptp!r}; expected a 64-bit unsigned integer")
        if eptp & EPTP_RESERVED_LOW:
            raise _eptp_failure(f"reserved bits 11:8 set: {eptp & EPTP_RESERVED_LOW:#x} in {eptp:#x}")
        if eptp & EPTP_SSS:
            raise _eptp_failure(f"bit 7 (supervisor shadow-stack control) set in {eptp:#x}, which this "
                                "processor does not support")
        if eptp & EPTP_RESERVED_HIGH:
            raise _eptp_failure(f"reserved bits 63:52 set: {eptp & EPTP_RESERVED_HIGH:#x} in {eptp:#x}")
        return cls(
            root=eptp & ADDR_MASK,
            levels=((eptp >> EPTP_WALK_SHIFT) & 7) + 1,
            ad=bool(eptp & EPTP_AD),
            memtype=eptp & 7,
            **features,
        )

    def validate(self, maxphyaddr: int) -> None:
        """The VM-entry checks of this EPTP on a processor with this MAXPHYADDR (``VMEntryFailure``)."""
        self._check_fields()
        if self.root >> maxphyaddr:
            raise _eptp_failure(f"address (root): {self.root:#x} sets reserved bits 51:{maxphyaddr} "
                                f"(beyond MAXPHYADDR={maxphyaddr})")
