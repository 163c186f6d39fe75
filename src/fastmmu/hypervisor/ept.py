"""EPTs the hypervisor builds for a VM, in frames of its own pool.

``VmEpt`` maps guest frames to the host frames the VM's layout gives them,
one at a time (on an EPT violation) or all at once, with large EPT pages
wherever the host frames are contiguous and aligned and ``max_frames``
allows (1 = 4 KiB only, 512 = up to 2 MiB, 512*512 = up to 1 GiB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastmmu.arch import EPT, FrameKind, MemType
from fastmmu.tables import EptTable

if TYPE_CHECKING:
    from fastmmu.hypervisor.machine import VM

PAGE_FRAMES = {"4K": 1, "2M": 512, "1G": 512 * 512}
_LEAF = int(EPT.RWX) | MemType.WB << 3


class VmEpt(EptTable):
    """An EPT for ``vm`` whose table frames come from the hypervisor's pool and are counted."""

    def __init__(self, vm: VM, levels: int, *, ad: bool = False, max_frames: int = 1, commit: bool = True) -> None:
        self.vm = vm
        self.commit = commit  # back the frames as they are mapped (False: map the planned frames only)
        self.layout = vm.memory
        self.max_frames = max_frames
        self.frames: list[int] = []
        self.mapped = np.zeros(vm.memory.frames, dtype=bool)  # guest frames mapped
        self.is_mapped = self.mapped.data  # the same, read one frame at a time without numpy's boxing
        # The host address of the last-level table of each 2 MiB of guest-physical memory, once made
        # (0: not yet): the tables are never freed before the EPT, so a 4 KiB violation is one store.
        self._leaf_tables = np.zeros(-(-vm.memory.frames // 512), dtype=np.uint64)
        self._leaf_table = self._leaf_tables.data
        super().__init__(vm.machine.mem, levels, ad=ad)

    def _new_table(self) -> int:
        frame = self.vm.alloc_hv_frame(FrameKind.EPT)
        self.frames.append(frame)
        return frame << 12

    def map_frame(self, gfn: int) -> None:
        """Map guest frame ``gfn`` (within the largest page that fits)."""
        for frames, size in ((512 * 512, "1G"), (512, "2M")):
            if self.max_frames >= frames:
                base = gfn & ~(frames - 1)
                if not self.mapped[base:base + frames].any():
                    frame = self.layout.large_run(base, frames, commit=self.commit)
                    if frame is not None:
                        self.map(base << 12, frame << 12, EPT.RWX, page_size=size)
                        self.mapped[base:base + frames] = True
                        return
        table = self._leaf_table[gfn >> 9]
        if not table:  # the tables on the way are made as EptTable.map makes them
            table = self._table_at(gfn << 12, 1, create=True, table_flags=int(EPT.RWX))
            self._leaf_table[gfn >> 9] = table
        self.mem.write(table + 8 * (gfn & 511), self._frame(gfn) << 12 | _LEAF)
        self.is_mapped[gfn] = True

    def map_all(self) -> None:
        """Map every guest frame, a 2 MiB chunk at a time."""
        frames = self.layout.frames
        for base in range(0, frames, 512):
            count = min(512, frames - base)
            if self.mapped[base:base + count].all():
                continue
            first = self.layout.large_run(base, 512, commit=self.commit) if count == 512 else None
            if first is not None and self.max_frames >= 512:
                self.map_frame(base)
                continue
            table = self._table_at(base << 12, 1, create=True, table_flags=int(EPT.RWX))
            if table is None:  # with create=True it is made or an error is raised
                raise RuntimeError(f"simulator bug: no EPT table for guest frame {base:#x}")
            if first is not None:  # contiguous: one run of entries
                self.mem.write_run(table, count, first << 12 | _LEAF, 4096)
            else:
                for i in range(count):
                    self.mem.write(table + 8 * i, self._frame(base + i) << 12 | _LEAF)
            self.mapped[base:base + count] = True

    def _frame(self, gfn: int) -> int:
        return self.layout.hfn(gfn) if self.commit else self.layout.planned(gfn)

    def release(self) -> None:
        self.vm.free_hv_frames(self.frames)
        self.frames.clear()
