"""A program read once and replayed from a spool: how ``compare`` shares one parse of a trace among modes.

Each mode of a comparison runs the same programs from their first step.  A
generated program is cheap to run again, but a trace would be read and parsed
once per mode.  ``SpooledProgram`` keeps the steps of the first pass (the first
256 MiB in memory, the rest in an unnamed temporary file, 9 bytes per access)
and hands every later pass the very same steps, so the results are those of
reading the trace again, bit for bit, for a fraction of the work.

Passes may overlap or stop early (``--max-accesses``, an interrupt): each pass
replays what is spooled and, past it, takes the next steps from the first pass's
iterator, spooling them as it goes.  An error the program raised (a malformed
record) is raised again at the same step of every later pass, as a fresh read
would.  The spool file lives in the temporary directory (``TMPDIR``) and is
gone when the comparison ends, or the process does.  If it cannot be written
(a full disk), the spool is dropped and every pass from then on reads the
program afresh, as without a spool.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from fastmmu.workloads.program import Accesses, Program, Step

# Bytes of accesses kept in memory (about 28 M accesses) before the rest goes to the spool file: a
# first write of a file costs about as much as parsing its trace again on this kind of machine.
MEMORY_BUDGET = 256 << 20


@dataclass(frozen=True)
class _OnDisk:
    """A batch of accesses in the spool file: ``count`` addresses at ``offset``, then their kinds."""

    offset: int
    count: int


class SpooledProgram:
    """``program``, whose steps are produced once and replayed from then on (see the module's docstring).

    Use it as a context manager (or call ``close``) to drop the spool."""

    def __init__(self, program: Program, *, memory_budget: int = MEMORY_BUDGET) -> None:
        self.program = program
        self.memory_budget = memory_budget
        self._steps: list[Step | _OnDisk] = []
        self._live: Iterator[Step] | None = None   # the first pass's iterator, until it is used up
        self._finished = False
        self._error: BaseException | None = None   # what the program raised after the last spooled step
        self._in_memory = 0
        self._file: IO[bytes] | None = None
        self._end = 0                                # bytes written to the spool file
        self._dropped = False                        # the spool could not be written: read afresh

    def __enter__(self) -> SpooledProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the spool (the temporary file goes with it): passes from now on read the program afresh."""
        self._drop()

    def steps(self) -> Iterator[Step]:
        index = 0
        while not self._dropped:
            if index < len(self._steps):
                yield self._load(self._steps[index])
                index += 1
            elif self._error is not None:
                raise _again(self._error)
            elif self._finished:
                return
            else:
                step = self._next_live()
                if step is None:
                    return
                entry = self._store(step)
                if not self._dropped:
                    self._steps.append(entry)
                index += 1
                yield step
        fresh = iter(self.program.steps())   # no spool: read the program again, past what this pass had
        for _ in range(index):
            next(fresh)
        yield from fresh

    def _next_live(self) -> Step | None:
        if self._live is None:
            self._live = iter(self.program.steps())
        try:
            return next(self._live)
        except StopIteration:
            self._finished, self._live = True, None
            return None
        except Exception as exc:   # the program's own error: every pass meets it here
            self._error, self._live = exc, None
            raise

    def _store(self, step: Step) -> Step | _OnDisk:
        if not isinstance(step, Accesses):
            return step
        size = step.addresses.nbytes + step.kinds.nbytes
        if self._in_memory + size <= self.memory_budget:
            self._in_memory += size
            return step
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="fastmmu-spool-")
            self._file.seek(self._end)
            self._file.write(step.addresses.data)
            self._file.write(step.kinds.data)
        except OSError:   # no room for the spool: later passes read the program afresh
            self._drop()
            return step
        entry = _OnDisk(self._end, len(step))
        self._end += size
        return entry

    def _drop(self) -> None:
        self._dropped = True
        if self._file is not None:
            self._file.close()
            self._file = None
        self._steps, self._live = [], None

    def _load(self, entry: Step | _OnDisk) -> Step:
        if not isinstance(entry, _OnDisk):
            return entry
        assert self._file is not None
        self._file.seek(entry.offset)
        addresses = np.fromfile(self._file, dtype=np.uint64, count=entry.count)
        kinds = np.fromfile(self._file, dtype=np.uint8, count=entry.count)
        if len(kinds) != entry.count:
            raise OSError(f"the spool file lost accesses at offset {entry.offset}")
        return Accesses.trusted(addresses, kinds)


def _again(error: BaseException) -> BaseException:
    """The program's error, raised anew for another pass (a fresh exception with the same arguments)."""
    try:
        return type(error)(*error.args)
    except Exception:
        return error
