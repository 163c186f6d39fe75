"""native: no hypervisor; the baseline every other mode is compared with."""

from __future__ import annotations

from fastmmu.hypervisor.modes.direct import DirectMode


class Native(DirectMode):
    """The guest kernel runs on the bare machine.

    - Traps: nothing.  Page faults go straight to the guest kernel.
    - The hardware walks: the guest's own page tables, which hold host
      addresses (the kernel's physical memory is the host frames its VM would
      be given, so every mode reaches the same frames).  A guest large page
      over host frames that are not one aligned run is walked in pieces
      (hidden tables; ``direct.py``), which the guest does not see.
    - The hypervisor keeps: nothing the guest sees; the simulator keeps what
      ``direct.py`` needs to convert guest-physical frames to host ones.
    - VM switch: free.  Each VM's kernel stands for a machine of its own; its
      TLB entries carry a per-VM tag, as one kernel's would carry PCIDs, so
      switching neither flushes nor costs anything.
    - A hostile guest gets what brute force gives it (the same machinery),
      with no exits counted.
    """

    name = "native"
    uses_vpid = True

    def switch_cost(self) -> None:
        pass
