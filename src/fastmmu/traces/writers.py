"""Writers of simulation output: the host-physical address trace of a run.

A DRAM or cache simulator downstream of fastmmu wants the addresses the
memory system really sees, after each mode's translation.  ``HostTraceWriter``
attaches to ``Machine.run(on_batch=...)`` and writes the host-physical address
of every completed access, in one of three formats:

- ``"native"``: the native compact format (traces/native.py), accesses plus a
  ``SwitchVM`` / ``SwitchProcess`` event whenever the VM or the process
  changes between batches; the header's metadata says it holds host addresses.
- ``"ramulator"``: one access per line, ``0x<hex address> R`` or ``W``: the
  DRAM trace of Ramulator (1.x, ``--mode=dram``: ``Trace::get_dramtrace_request``
  reads a hex address, then ``R`` or ``W``), which many cache and DRAM tools
  also take.
- ``"dramsim3"``: one access per line, ``0x<hex address> READ|WRITE <cycle>``:
  the trace of DRAMsim3's ``TraceBasedCPU`` (hex address, type, decimal cycle
  at which to issue).  The cycle is the access's index in the file, one
  access per cycle: the memory system takes them as fast as it accepts.

Fetches count as reads in the text formats (a DRAM sees a read).  Each run
(each mode) needs its own writer and file.  The text is formatted by numpy in
blocks (no Python per access), and the writer buffers at most
``buffer_records`` accesses, so its memory is bounded however long the run.

``PteTraceWriter`` writes the PTE-access trace the same ways: the host-physical
address of every entry the hardware's walks read, from the MMU's reference log
(``MMU.log_references``).
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import numpy as np

from fastmmu.arch import Access
from fastmmu.traces.base import SwitchProcess, SwitchVM
from fastmmu.traces.native import NativeWriter
from fastmmu.traces.output import AtomicOutput, PathLike, open_output

# The formats these writers write, with the file suffix each is named with (--host-trace, --pte-trace).
FORMATS = {"native": ".fmt", "ramulator": ".ramulator.txt", "dramsim3": ".dramsim3.txt"}
BUFFER_RECORDS = 1 << 16

_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_KIND_MASK = np.uint8(Access.WRITE | Access.FETCH)  # on_batch kinds carry the CPL-3 bit; drop it
_WRITE = np.uint8(Access.WRITE)


class _Lines:
    """Text lines of ``count`` accesses built column by column: a character matrix and a mask of
    the characters shown (numbers have no leading zeros), compacted at the end.  Every numpy
    operation runs down a whole column: row-wise ones would loop over a few bytes at a time."""

    def __init__(self, count: int, width: int) -> None:
        self.text = np.empty((count, width), dtype=np.uint8)
        self.shown = np.ones((count, width), dtype=bool)
        self.column = 0
        self._group = np.empty(0, dtype=np.uint32)  # the decimal digits not yet written (see _digit)

    def constant(self, text: bytes) -> None:
        for byte in text:
            self.text[:, self.column] = byte
            self.column += 1

    def choice(self, writes: np.ndarray, read: bytes, write: bytes) -> None:
        """``write`` where ``writes`` else ``read``."""
        for k in range(max(len(read), len(write))):
            if k < len(read) and k < len(write):
                self.text[:, self.column] = np.where(writes, write[k], read[k]) if read[k] != write[k] else read[k]
            else:
                self.text[:, self.column] = write[k] if k < len(write) else read[k]
                self.shown[:, self.column] = writes if k < len(write) else ~writes
            self.column += 1

    def number(self, values: np.ndarray, base: int) -> None:
        """``values`` in ``base`` (16 or 10), lowercase, no leading zeros."""
        width = _digits(int(values.max()), base)
        for place in range(width):  # place 0: the least significant digit, always shown
            column = self.column + width - 1 - place
            self.text[:, column] = _DIGITS[self._digit(values, base, place)]
            if place:
                self.shown[:, column] = values >= np.uint64(base**place)
        self.column += width

    def _digit(self, values: np.ndarray, base: int, place: int) -> np.ndarray:
        if base == 16:
            return (values >> np.uint64(4 * place)) & np.uint64(15)
        if place % 8 == 0:  # eight decimal digits at a time in 32 bits: uint64 division is several times slower
            self._group = ((values // np.uint64(10**place)) % np.uint64(10**8)).astype(np.uint32)
        quotient = self._group // np.uint32(10)
        digit = self._group - quotient * np.uint32(10)
        self._group = quotient
        return digit

    def bytes(self) -> bytes:
        return self.text[self.shown].tobytes()


def _digits(value: int, base: int) -> int:
    return max(1, (value.bit_length() + 3) // 4) if base == 16 else len(str(value))


def format_lines(addresses: np.ndarray, writes: np.ndarray, style: str, first_cycle: int = 0) -> bytes:
    """The text lines of a block of accesses (``writes``: bool per access) in ``style``
    ("ramulator" or "dramsim3"; the DRAMsim3 cycles count from ``first_cycle``)."""
    count = len(addresses)
    if not count:
        return b""
    addresses = np.asarray(addresses, dtype=np.uint64)
    width = 2 + _digits(int(addresses.max()), 16)
    if style == "ramulator":
        lines = _Lines(count, width + 3)
        lines.constant(b"0x")
        lines.number(addresses, 16)
        lines.choice(writes, b" R\n", b" W\n")
    else:
        last = first_cycle + count - 1
        lines = _Lines(count, width + 7 + _digits(last, 10) + 1)
        lines.constant(b"0x")
        lines.number(addresses, 16)
        lines.choice(writes, b" READ ", b" WRITE ")
        lines.number(np.arange(first_cycle, last + 1, dtype=np.uint64), 10)
        lines.constant(b"\n")
    return lines.bytes()


class HostTraceWriter:
    """The host-physical address trace of a run, for ``Machine.run(on_batch=writer.on_batch)``.

    >>> from fastmmu.comparison import build
    >>> from fastmmu.workloads import ProcessSpec, Scenario, VMSpec, zipf
    >>> scenario = Scenario([VMSpec("vm", memory="64MiB", processes=[ProcessSpec("p", zipf(pages=64, n=1000))])])
    >>> import io
    >>> out = io.BytesIO()
    >>> with HostTraceWriter(out, "ramulator") as writer:
    ...     _ = build(scenario, "nested").run(on_batch=writer.on_batch)
    >>> writer.records, out.getvalue().count(b"\\n")
    (1000, 1000)
    """

    def __init__(self, target: PathLike | BinaryIO, format: str = "native", *,
                 metadata: dict[str, Any] | None = None, buffer_records: int = BUFFER_RECORDS) -> None:
        if format not in FORMATS:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
        if buffer_records <= 0:
            raise ValueError(f"buffer_records: expected a positive count, got {buffer_records}")
        self.format = format
        self.records = 0
        self._addresses = np.empty(buffer_records, dtype=np.uint64)
        self._kinds = np.empty(buffer_records, dtype=np.uint8)
        self._count = 0
        self._vm: int | None = None
        self._pid: int | None = None
        self._native: NativeWriter | None = None
        self._text: BinaryIO | AtomicOutput | None = None
        self._file: AtomicOutput | None = None   # a path's file, written under a temporary name
        if format == "native":
            self._native = NativeWriter(target, {"content": "host-physical addresses", **(metadata or {})})
        elif isinstance(target, (str, os.PathLike)):
            self._text = self._file = open_output(target)
        else:
            self._text = target

    def __enter__(self) -> HostTraceWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def on_batch(self, vm: Any, process: Any, addresses: np.ndarray, kinds: np.ndarray,
                 host_addresses: np.ndarray, start: int, stop: int) -> None:
        """The ``Machine.run`` hook: accesses [start, stop) are done, at ``host_addresses``."""
        if stop > start:
            self.write(vm, process, host_addresses[start:stop], kinds[start:stop] & _KIND_MASK)

    def write(self, vm: Any, process: Any, hosts: np.ndarray, access: np.ndarray) -> None:
        """Append accesses of ``process`` in ``vm``: host addresses and kinds (READ, WRITE, FETCH)."""
        count = len(hosts)
        if self._native is not None and (vm.id != self._vm or process.pid != self._pid):
            self._flush_buffer()
            if vm.id != self._vm:
                self._native.write_event(SwitchVM(vm.id))
            self._native.write_event(SwitchProcess(process.pid))
            self._vm, self._pid = vm.id, process.pid
        room = len(self._addresses) - self._count
        if count > room:  # a big batch: flush what is buffered and write it in place
            self._flush_buffer()
            self._write(hosts, access)
            return
        end = self._count + count
        self._addresses[self._count:end] = hosts
        self._kinds[self._count:end] = access
        self._count = end
        if end == len(self._addresses):
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        if self._count:
            self._write(self._addresses[:self._count], self._kinds[:self._count])
            self._count = 0

    def _write(self, addresses: np.ndarray, kinds: np.ndarray) -> None:
        if self._native is not None:
            self._native.write_accesses(addresses, kinds)
            self.records += len(addresses)
            return
        if self._text is None:
            raise ValueError("write to a closed HostTraceWriter")
        block = len(self._addresses)
        for start in range(0, len(addresses), block):  # formatted in bounded blocks
            part = slice(start, start + block)
            self._text.write(format_lines(addresses[part], (kinds[part] & _WRITE) != 0, self.format,
                                          self.records))
            self.records += len(addresses[part])

    def flush(self) -> None:
        self._flush_buffer()
        if self._native is not None:
            self._native.flush()
        elif self._text is not None:
            self._text.flush()

    def close(self, *, partial: bool = False) -> None:
        """Write what is buffered and finish the file: a path is renamed into place (a native
        trace after its end record, flagged ``partial`` if the run was cut short), a stream the
        caller gave is flushed, not closed."""
        if self._native is None and self._text is None:
            return
        try:
            self._flush_buffer()
            if self._native is not None:
                self._native.close(partial=partial)
            elif self._file is not None:
                self._file.commit()
            elif self._text is not None:
                self._text.flush()
        except BaseException:
            self.abort()
            raise
        self._native = self._text = self._file = None

    def abort(self) -> None:
        """Stop without finishing: a path's temporary file is removed, nothing appears under its name."""
        native, file = self._native, self._file
        self._native = self._text = self._file = None
        if native is not None:
            native.abort()
        if file is not None:
            file.discard()


class PteTraceWriter(HostTraceWriter):
    """The PTE-access trace of a run: the host-physical address of every page-table entry the
    hardware walks read (native, guest, shadow or EPT tables), in the formats of ``HostTraceWriter``
    (each reference a READ).  ``attach(machine)`` before the run turns the MMU's reference log on;
    ``on_batch`` then drains it.  TLB hits make no reference; faulting walks do (they read memory)."""

    def __init__(self, target: PathLike | BinaryIO, format: str = "native", *,
                 metadata: dict[str, Any] | None = None, buffer_records: int = BUFFER_RECORDS) -> None:
        super().__init__(target, format, buffer_records=buffer_records,
                         metadata={"content": "page-walk references (host-physical)", **(metadata or {})})

    _mmu: Any = None
    _last: tuple[Any, Any] | None = None

    def attach(self, machine: Any) -> None:
        self._mmu = machine.mmu
        self._mmu.log_references(True)

    def on_batch(self, vm: Any, process: Any, addresses: np.ndarray, kinds: np.ndarray,
                 host_addresses: np.ndarray, start: int, stop: int) -> None:
        self._last = (vm, process)
        self._drain(vm.machine.mmu, vm, process)

    def close(self, *, partial: bool = False) -> None:
        """Also the references of walks no completed access followed (a last fault, say)."""
        if self._mmu is not None and self._last is not None and (self._native or self._text):
            self._drain(self._mmu, *self._last)
        super().close(partial=partial)

    def _drain(self, mmu: Any, vm: Any, process: Any) -> None:
        references = mmu.take_references()
        if len(references):
            self.write(vm, process, references["address"], np.zeros(len(references), dtype=np.uint8))
