"""How host memory is divided, and where each guest-physical frame of a VM lives.

The host's frames are split into the hypervisor's own pool (at the bottom:
shadow tables and EPTs come from it) and one partition per VM, carved out
when the VM is created.  Inside its partition a VM's guest frames are laid
out contiguously (guest frame g is host frame base + g) or scattered (a
seeded random permutation of the partition, so neighbouring guest frames are
rarely neighbours on the host, and large host pages cannot back them).
Frames are taken from the host eagerly at creation or on demand at first
use; either way the frame a guest frame gets is fixed at creation, so every
mode reaches the same host frame for the same access.

With overcommit there are no partitions: a VM's frames are allocated on
first use from whatever is free, and running out stops that VM cleanly.
"""

from __future__ import annotations

import numpy as np

from fastmmu.arch import FrameKind
from fastmmu.guest.port import GuestMemoryError


class HostExhausted(Exception):
    """The host has no frame left to back a guest frame (overcommit) or a hypervisor table."""


class Partitions:
    """First-fit extents of host frames above the hypervisor's pool."""

    def __init__(self, first: int, end: int) -> None:
        self.free: list[tuple[int, int]] = [(first, end)] if first < end else []

    @property
    def available(self) -> int:
        return sum(end - start for start, end in self.free)

    def take(self, count: int, align: int = 1) -> int | None:
        for i, (start, end) in enumerate(self.free):
            base = -(-start // align) * align
            if base + count <= end:
                pieces = [(start, base)] if start < base else []
                if base + count < end:
                    pieces.append((base + count, end))
                self.free[i:i + 1] = pieces
                return base
        return None

    def give_back(self, base: int, count: int) -> None:
        self.free.append((base, base + count))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for start, end in self.free:
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        self.free = merged


class VMMemory:
    """Guest frame -> host frame for one VM, backing frames eagerly or on first use."""

    def __init__(self, mem: object, owner: int, frames: int, *, backing: str, allocation: str,
                 base: int | None, seed: int, overcommit_lo: int = 0) -> None:
        self.mem = mem
        self.owner = owner
        self.frames = frames
        self.backing = backing
        self.allocation = allocation
        self.base = base  # first host frame of the partition; None with overcommit
        self._lo = overcommit_lo
        self._perm: np.ndarray | None = None
        self._inverse: np.ndarray | None = None
        self._backed = np.zeros(frames, dtype=bool) if allocation == "on_demand" or base is None else None
        self._overcommit: np.ndarray | None = None
        self.backed_frames = 0
        if base is None:  # overcommit: frames come from the free pool at first use
            self._overcommit = np.zeros(frames, dtype=np.uint64)
            self._reverse: dict[int, int] = {}
        elif backing == "scattered":
            rng = np.random.default_rng(seed)
            self._perm = rng.permutation(frames).astype(np.uint32 if frames < 1 << 32 else np.uint64)
            self._inverse = np.empty_like(self._perm)
            self._inverse[self._perm] = np.arange(frames, dtype=self._perm.dtype)
        self._base = base or 0
        self._direct = base is not None and backing == "contiguous" and allocation == "eager"
        if base is not None and allocation == "eager":
            mem.alloc_at(np.arange(base, base + frames, dtype=np.uint64), owner=owner,  # type: ignore[attr-defined]
                         kind=FrameKind.DATA)
            self.backed_frames = frames

    @property
    def size(self) -> int:
        return self.frames << 12

    def check(self, gfn: int) -> None:
        if not 0 <= gfn < self.frames:
            raise GuestMemoryError(f"guest-physical address {gfn << 12:#x} is beyond the VM's "
                                   f"{self.frames << 12:#x} bytes of memory")

    def planned(self, gfn: int) -> int:
        """The host frame ``gfn`` has or will have (partitioned VMs), without backing it."""
        if self.base is None:
            raise ValueError("planned: an overcommitted VM's frames are not planned; they are taken at first use")
        if self._perm is not None:
            return self.base + int(self._perm[gfn])
        return self.base + gfn

    def hfn(self, gfn: int) -> int:
        """The host frame backing ``gfn``, backing it now if it is not yet."""
        if self._direct and 0 <= gfn < self.frames:  # the common case, first: contiguous and eager
            return self._base + gfn
        self.check(gfn)
        if self._overcommit is not None and self._backed is not None:
            if self._backed[gfn]:  # frame 0 is a frame too: the flag, not the value, says backed
                return int(self._overcommit[gfn])
            try:
                frame = self.mem.alloc_frame(owner=self.owner, kind=FrameKind.DATA, lo=self._lo)  # type: ignore[attr-defined]
            except MemoryError as exc:
                raise HostExhausted(f"host memory exhausted while backing guest frame {gfn:#x}") from exc
            self._overcommit[gfn] = frame
            self._backed[gfn] = True
            self._reverse[frame] = gfn
            self.backed_frames += 1
            return frame
        frame = self.planned(gfn)
        if self._backed is not None and not self._backed[gfn]:
            self.mem.alloc_at([frame], owner=self.owner, kind=FrameKind.DATA)  # type: ignore[attr-defined]
            self._backed[gfn] = True
            self.backed_frames += 1
        return frame

    def hfn_array(self, gfns: np.ndarray) -> np.ndarray:
        """``hfn`` of each of ``gfns`` (checked guest frames), as a uint64 array."""
        gfns = np.asarray(gfns, dtype=np.int64)
        if self._direct:
            return gfns.astype(np.uint64) + np.uint64(self._base)
        if self._backed is not None and not self._backed[gfns].all():  # some to back now: one at a time
            return np.array([self.hfn(g) for g in gfns.tolist()], dtype=np.uint64)
        if self._overcommit is not None:
            return self._overcommit[gfns]
        if self._perm is not None:
            return self._perm[gfns].astype(np.uint64) + np.uint64(self._base)
        return gfns.astype(np.uint64) + np.uint64(self._base)

    def hfns(self, gfn: int, count: int) -> np.ndarray:
        """The host frames of guest frames [gfn, gfn + count), backing them now if they are not yet."""
        self.check(gfn)
        self.check(gfn + count - 1)
        if self._overcommit is not None:
            return np.array([self.hfn(g) for g in range(gfn, gfn + count)], dtype=np.uint64)
        gfns = np.arange(gfn, gfn + count, dtype=np.uint64)
        frames = np.uint64(self._base) + (self._perm[gfns].astype(np.uint64) if self._perm is not None else gfns)
        if self._backed is not None:
            todo = np.flatnonzero(~self._backed[gfn:gfn + count])
            if len(todo):
                self.mem.alloc_at(frames[todo], owner=self.owner, kind=FrameKind.DATA)  # type: ignore[attr-defined]
                self._backed[gfn + todo] = True
                self.backed_frames += len(todo)
        return frames

    def is_backed(self, gfn: int) -> bool:
        return 0 <= gfn < self.frames and (self._backed is None or bool(self._backed[gfn]))

    def gfn_of(self, hfn: int) -> int | None:
        """The guest frame a host frame backs, or None if it is not this VM's."""
        if self._overcommit is not None:
            return self._reverse.get(hfn)
        offset = hfn - self._base
        if not 0 <= offset < self.frames:
            return None
        return int(self._inverse[offset]) if self._inverse is not None else offset

    def large_run(self, gfn: int, count: int, *, commit: bool = True) -> int | None:
        """The host frame of ``count`` guest frames from ``gfn`` if they are contiguous and
        aligned on the host (so one large page can map them), backing them unless ``commit``
        is false; None otherwise."""
        if self.base is None or self._perm is not None or gfn % count or gfn + count > self.frames:
            return None
        frame = self.base + gfn
        if frame % count:
            return None
        if self._backed is not None and commit:
            todo = np.flatnonzero(~self._backed[gfn:gfn + count])
            if len(todo):
                self.mem.alloc_at(frame + todo.astype(np.uint64), owner=self.owner,  # type: ignore[attr-defined]
                                  kind=FrameKind.DATA)
                self._backed[gfn + todo] = True
                self.backed_frames += len(todo)
        return frame

    def host_frames(self) -> np.ndarray:
        """Every host frame this VM holds now."""
        if self._overcommit is not None and self._backed is not None:
            return self._overcommit[self._backed]
        gfns = np.arange(self.frames, dtype=np.uint64) if self._backed is None else \
            np.flatnonzero(self._backed).astype(np.uint64)
        if self._perm is not None:
            return np.uint64(self._base) + self._perm[gfns].astype(np.uint64)
        return np.uint64(self._base) + gfns

    def release(self) -> None:
        """Give every backed frame back to the host."""
        frames = np.sort(self.host_frames())  # ascending: the host checks it for duplicates in one pass
        if len(frames):
            self.mem.free(frames)  # type: ignore[attr-defined]
        self.backed_frames = 0
        if self._backed is not None:
            self._backed[:] = False
        if self._overcommit is not None:
            self._overcommit[:] = 0
            self._reverse.clear()
