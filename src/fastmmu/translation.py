"""The result of one translation, as the per-access API returns it (tests and teaching)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastmmu.arch import Status


@dataclass(frozen=True)
class Reference:
    """One memory reference a walk made: the teaching view of ``fastmmu explain``.

    ``dimension`` is "guest" (x86 paging, native or guest tables) or "ept";
    ``level`` is 1 (PT) .. 5 (PML5); ``address`` is the host-physical address
    read; ``value`` the entry as read (before any A/D update).
    """

    dimension: str
    level: int
    address: int
    value: int


@dataclass(frozen=True)
class Walk:
    """Outcome of one translation.

    ``fault_address`` is CR2 (the linear address) for a page fault and the
    exact guest-physical address for an EPT violation or misconfiguration.
    ``guest_refs`` and ``ept_refs`` count references per level (index 0 = level 1).
    """

    status: Status
    host_address: int = 0
    guest_physical_address: int = 0
    page_size: int = 0
    error_code: int = 0
    fault_address: int = 0
    exit_qualification: int = 0
    guest_linear_address: int = 0
    attrs: int = 0
    is_global: bool = False
    pkey: int = 0
    memtype: int = 0
    guest_refs: tuple[int, ...] = (0, 0, 0, 0, 0)
    ept_refs: tuple[int, ...] = (0, 0, 0, 0, 0)
    trace: tuple[Reference, ...] = field(default=(), compare=False)

    @classmethod
    def _from_core(cls, status: Status, host_address: int, guest_physical_address: int, page_size: int,
                   error_code: int, fault_address: int, exit_qualification: int, guest_linear_address: int,
                   attrs: int, is_global: bool, pkey: int, memtype: int, guest_refs: tuple[int, ...],
                   ept_refs: tuple[int, ...], trace: tuple[Reference, ...]) -> Walk:
        """Build one from the compiled core's fields without the frozen dataclass's per-field
        ``object.__setattr__`` (it is on the path of every fault the run loop stops at)."""
        walk = object.__new__(cls)
        walk.__dict__.update(status=status, host_address=host_address,
                             guest_physical_address=guest_physical_address, page_size=page_size,
                             error_code=error_code, fault_address=fault_address,
                             exit_qualification=exit_qualification, guest_linear_address=guest_linear_address,
                             attrs=attrs, is_global=is_global, pkey=pkey, memtype=memtype, guest_refs=guest_refs,
                             ept_refs=ept_refs, trace=trace)
        return walk

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def fault(self) -> str | None:
        """None when the translation succeeded, else the kind of fault."""
        return None if self.status == Status.OK else self.status.name.lower()

    @property
    def references(self) -> int:
        """Memory references made, both dimensions."""
        return sum(self.guest_refs) + sum(self.ept_refs)
