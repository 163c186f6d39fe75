"""Settings of the guest kernel (``guest.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastmmu.settings import check_bool, check_int, check_size, setting


@dataclass(frozen=True)
class GuestConfig:
    levels: int = setting(4, "paging levels of the guest's page tables (5 = LA57)", choices=(4, 5))
    pcid: bool = setting(True, "processes get PCIDs and context switches keep their translations")
    huge_pages: bool = setting(False, "back every region with 2 MiB pages where it fits (else only "
                                      "regions mapped with huge=True)")
    quantum: int = setting(20_000, "accesses a process runs before the guest scheduler switches",
                           unit="accesses")
    reserved: int = setting(4 << 20, "guest memory kept by the kernel itself (never given to processes)",
                            unit="bytes")

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_int(self.levels, "guest.levels", minimum=4, maximum=5))
        object.__setattr__(self, "pcid", check_bool(self.pcid, "guest.pcid"))
        object.__setattr__(self, "huge_pages", check_bool(self.huge_pages, "guest.huge_pages"))
        object.__setattr__(self, "quantum", check_int(self.quantum, "guest.quantum", minimum=1))
        object.__setattr__(self, "reserved", check_size(self.reserved, "guest.reserved"))
