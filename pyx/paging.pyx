"""Page walkers, one translation at a time: the per-access API for tests and teaching.

The kernels live in ``fastmmu/_core/paging.pxd`` (inline, nogil) so the batch
run loop compiles them in place.  This module checks every argument with the
GIL held, converts ``CpuState`` / ``EptConfig`` / cache objects into C
structs, runs one walk and returns a ``Walk``.  A single walk is far too
short to be worth releasing the GIL: holding it also guarantees that no
other thread resizes the memory buffers while the walk reads them.
"""

from collections.abc import Mapping
from time import perf_counter_ns

import numpy as np

from fastmmu._core.memory cimport HostMemory
from fastmmu._core.paging cimport (
    ATTR_D,
    ATTR_EPT_D,
    ATTR_EPT_R,
    ATTR_EPT_W,
    ATTR_EPT_X,
    ATTR_G,
    ATTR_MEMTYPE_SHIFT,
    ATTR_PKEY_SHIFT,
    ATTR_U,
    ATTR_W,
    ATTR_XD,
    EQ_FETCH,
    EQ_FINAL,
    EQ_GLA_USER,
    EQ_GLA_VALID,
    EQ_GLA_WRITABLE,
    EQ_GLA_XD,
    EQ_READ,
    EQ_RIGHTS_SHIFT,
    EQ_WRITE,
    PFERR_ID,
    PFERR_P,
    PFERR_PK,
    PFERR_RSVD,
    PFERR_U,
    PFERR_W,
    WALK_EPT_MISCONFIG,
    WALK_EPT_VIOLATION,
    WALK_GP,
    WALK_OK,
    WALK_PAGE_FAULT,
    WALK_TRAP,
    ept_prepare,
    ept_t,
    no_trace_t,
    paging_prepare,
    paging_t,
    walk_caches_init,
    walk_caches_t,
    walk_ept as _walk_ept_kernel,
    walk_native as _walk_native_kernel,
    walk_nested as _walk_nested_kernel,
    walk_t,
    walk_trace_clear,
    walk_trace_t,
)
from fastmmu._core.paging cimport check_access as _check_access_kernel
from fastmmu._core.tlb cimport SIZE_1G, SIZE_2M, SIZE_4K, TLB, tlb_ctx
from fastmmu._core.types cimport (
    ACC_FETCH,
    ACC_VALID_MASK,
    ACC_WRITE,
    PAGE_SHIFT,
    uint8_t,
    uint32_t,
    uint64_t,
)

from fastmmu.arch import Status
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.translation import Reference, Walk
from fastmmu.units import format_size

__all__ = ["BUILD_DEBUG", "check_access", "walk", "walk_ept", "walk_nested"]

# Keys of the ``caches`` argument that name paging-structure caches: key -> (level, name).
_PSC_KEYS = {"pde": (2, "PDE"), "pdpte": (3, "PDPTE"), "pml4e": (4, "PML4E"), "pml5e": (5, "PML5E")}
_CACHE_KEYS = ("pde", "pdpte", "pml4e", "pml5e", "nested", "pcid", "vpid")
_DIMENSIONS = ("guest", "ept")
_U64_LIMIT = 1 << 64


# -- argument checks (GIL held, before any kernel runs) --------------------------------

cdef object _integer(object value, str what, object limit):
    """``value`` as a Python int in [0, limit); TypeError/ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0 or value >= limit:
        raise ValueError(f"{what}: expected 0 <= {what} < {limit:#x}, got {value:#x}"
                         if value >= 0 else f"{what}: expected a non-negative integer, got {value}")
    return value


cdef uint32_t _check_access(object access) except? 0xFFFFFFFF:
    """An access-kind byte: bits 0..3 only, never WRITE and FETCH together."""
    cdef object a = _integer(access, "access", 256)
    if a & ~ACC_VALID_MASK:
        raise ValueError(f"access: bits 4..7 must be zero (WRITE=1, FETCH=2, USER=4, IMPLICIT=8), "
                         f"got {a:#x}")
    if (a & ACC_WRITE) and (a & ACC_FETCH):
        raise ValueError(f"access: WRITE and FETCH together is not an access kind, got {a:#x}")
    return a


cdef HostMemory _check_mem(object mem):
    if not isinstance(mem, HostMemory):
        raise TypeError(f"mem: expected a fastmmu.HostMemory, got {type(mem).__name__}")
    return <HostMemory>mem


cdef int _check_levels(object levels, str what) except -1:
    if isinstance(levels, bool) or levels not in (4, 5):
        raise ValueError(f"{what}: expected 4 or 5 paging levels, got {levels!r}")
    return 0


cdef int _check_root_in_memory(HostMemory mem, uint64_t root, str what) except -1:
    if (root >> PAGE_SHIFT) >= mem.c.nframes:
        raise ValueError(f"{what}: root table {root:#x} is beyond host memory "
                         f"({format_size(mem.size)})")
    return 0


cdef int paging_from_cpu(paging_t *p, object cpu, uint8_t maxphyaddr) except -1:
    """Fill ``p`` from a ``CpuState`` (checked again: its fields are mutable)."""
    _paging_controls(p, cpu, maxphyaddr)
    _integer(cpu.cr3, "cpu.cr3", _U64_LIMIT)
    cpu.validate(maxphyaddr)                 # CR3 bits beyond MAXPHYADDR (or bit 63): ValueError
    p.root = cpu.root
    p.pcid = cpu.pcid
    return 0


cdef int _paging_controls(paging_t *p, object cpu, uint8_t maxphyaddr) except -1:
    """The control bits of a ``CpuState`` (not CR3) and the tables derived from them."""
    if not isinstance(cpu, CpuState):
        raise TypeError(f"cpu: expected a fastmmu.cpu.CpuState, got {type(cpu).__name__}")
    _check_levels(cpu.levels, "cpu.levels")
    pkru = _integer(cpu.pkru, "cpu.pkru", 1 << 32)
    p.root = 0
    p.pcid = 0
    p.pkru = pkru
    p.levels = cpu.levels
    p.wp = bool(cpu.cr0_wp)
    p.nxe = bool(cpu.efer_nxe)
    p.pge = bool(cpu.cr4_pge)
    p.smep = bool(cpu.cr4_smep)
    p.smap = bool(cpu.cr4_smap)
    p.pke = bool(cpu.cr4_pke)
    p.ac = bool(cpu.eflags_ac)
    p.maxphyaddr = maxphyaddr
    paging_prepare(p)
    return 0


cdef int ept_from_config(ept_t *e, object ept, uint8_t maxphyaddr) except -1:
    """Fill ``e`` from an ``EptConfig`` (checked again: its fields are mutable)."""
    if not isinstance(ept, EptConfig):
        raise TypeError(f"ept: expected a fastmmu.cpu.EptConfig, got {type(ept).__name__}")
    ept.validate(maxphyaddr)                 # the VM-entry checks of the EPTP: VMEntryFailure
    eptag = _integer(ept.eptag, "ept.eptag", 1 << 32)
    if eptag == 0:
        raise ValueError("ept.eptag: expected 1..2^32-1, got 0")
    e.root = ept.root
    e.eptag = eptag
    e.levels = ept.levels
    e.ad = bool(ept.ad)
    e.execute_only = bool(ept.execute_only)
    e.advanced_exit_info = bool(ept.advanced_exit_info)
    e.maxphyaddr = maxphyaddr
    ept_prepare(e)
    return 0


cdef object _cache_entry(object caches, str key):
    if isinstance(caches, Mapping):
        return caches.get(key)
    return getattr(caches, key, None)


cdef TLB _check_tlb(object obj, str key, str kind):
    if not isinstance(obj, TLB):
        raise TypeError(f"caches[{key!r}]: expected a fastmmu._core.tlb.TLB, got {type(obj).__name__}")
    if (<TLB>obj).kind != kind:
        raise ValueError(f"caches[{key!r}]: expected a TLB of kind {kind!r}, got kind {(<TLB>obj).kind!r}")
    return <TLB>obj


cdef class _Caches:
    """The ``caches`` argument turned into a ``walk_caches_t``, with the TLB objects it points into.

    Per-access semantics (docs/core-semantics.md): every lookup and fill
    takes its structure's own clock and advances it; ``store_clocks``
    writes the clocks back after the walk.
    """
    cdef walk_caches_t c
    cdef list psc                 # (level, TLB) in use
    cdef TLB nested

    def __cinit__(self):
        walk_caches_init(&self.c)
        self.c.tick = 1
        self.psc = []
        self.nested = None

    cdef void store_clocks(self) noexcept:
        for level, t in self.psc:
            (<TLB>t).clock = self.c.psc_clock[<int>level]
        if self.nested is not None:
            self.nested.clock = self.c.nested_clock


cdef _Caches _setup_caches(object caches, int levels, bint x86, bint nested, uint32_t pcid,
                           uint32_t eptag):
    """Check the ``caches`` argument and convert it; structures the walk does not use are ignored.

    A paging-structure cache is used by x86 walks up to their number of
    levels, the nested TLB by EPT translations (``walk_nested``, ``walk_ept``).
    """
    cdef _Caches out = _Caches()
    cdef TLB t
    cdef int level
    if isinstance(caches, Mapping):
        for key in caches:
            if key not in _CACHE_KEYS:
                raise ValueError(f"caches: unknown key {key!r}; expected some of {', '.join(_CACHE_KEYS)}")
    elif caches is not None and not any(hasattr(caches, key) for key in _CACHE_KEYS):
        raise TypeError(f"caches: expected a dict such as {{'pde': TLB, 'nested': TLB}} or None, "
                        f"got {type(caches).__name__}")
    for key, (level, name) in _PSC_KEYS.items():
        obj = _cache_entry(caches, key)
        if obj is None:
            continue
        t = _check_tlb(obj, key, "psc")
        if t.c.nsizes != 1 or t.c.shift[t.c.codes[0]] != PAGE_SHIFT + 9 * (level - 1):
            raise ValueError(f"caches[{key!r}]: a {name} cache holds regions of "
                             f"{format_size(1 << (PAGE_SHIFT + 9 * (level - 1)))} "
                             f"(region_shift={PAGE_SHIFT + 9 * (level - 1)}), got "
                             f"region_shift={t.c.shift[t.c.codes[0]]}")
        if x86 and level <= levels:
            out.c.psc[level] = &t.c
            out.c.psc_clock[level] = t.clock
            out.psc.append((level, t))
    obj = _cache_entry(caches, "nested")
    if obj is not None:
        t = _check_tlb(obj, "nested", "ntlb")
        for i in range(t.c.nsizes):
            code = t.c.codes[i]
            if code not in (SIZE_4K, SIZE_2M, SIZE_1G) or t.c.shift[code] != PAGE_SHIFT + 9 * code:
                raise ValueError("caches['nested']: a nested TLB holds 4K, 2M or 1G pages")
        if nested:
            out.c.nested = &t.c
            out.c.nested_clock = t.clock
            out.nested = t
    vpid = _cache_entry(caches, "vpid")
    vpid = 0 if vpid is None else _integer(vpid, "caches['vpid']", 1 << 16)
    override = _cache_entry(caches, "pcid")
    if override is not None:
        pcid = _integer(override, "caches['pcid']", 1 << 12)
    out.c.ctx = tlb_ctx(pcid, vpid, eptag, 0)
    out.c.nested_ctx = tlb_ctx(0, 0, eptag, 0)
    return out


cdef object walk_result(walk_t *out, walk_trace_t *trace, bint with_trace):
    refs = ()
    if with_trace:
        refs = tuple(Reference(_DIMENSIONS[trace.refs[i].dimension], trace.refs[i].level,
                               trace.refs[i].address, trace.refs[i].value)
                     for i in range(trace.count))
    return Walk._from_core(
        _STATUSES[out.status], out.host_address, out.guest_physical_address,
        (1 << out.page_shift) if out.status == WALK_OK else 0, out.error_code, out.fault_address,
        out.exit_qualification, out.guest_linear_address, out.attrs, bool(out.is_global), out.pkey, out.memtype,
        (trace.counts.guest_refs[1], trace.counts.guest_refs[2], trace.counts.guest_refs[3],
         trace.counts.guest_refs[4], trace.counts.guest_refs[5]),
        (trace.counts.ept_refs[1], trace.counts.ept_refs[2], trace.counts.ept_refs[3],
         trace.counts.ept_refs[4], trace.counts.ept_refs[5]),
        refs,
    )


_STATUSES = tuple(Status)  # by value: Status(n) is slow on the path of every fault


# -- the API ---------------------------------------------------------------------------

def check_access(attrs, access, cpu):
    """Page-fault error code with which a translation's ``attrs`` deny ``access``; 0 = allowed.

    The function the walkers end with and the run loop applies to TLB hits
    (SDM 4.6): ``attrs`` in the TLB layout (ATTR_W/U/XD, key in bits 11:8;
    ATTR_XD already includes EFER.NXE), ``cpu`` a ``CpuState``.
    """
    cdef paging_t p
    cdef uint64_t rights = _integer(attrs, "attrs", 1 << 32)
    cdef uint32_t kind = _check_access(access)
    _paging_controls(&p, cpu, 52)
    return _check_access_kernel(<uint32_t>rights, kind, &p)


def walk(mem, cpu, va, access=0, *, caches=None, trace=False):
    """Translate linear address ``va`` natively (tables in host memory from ``cpu.cr3``).

    ``access`` is an access-kind byte (``fastmmu.arch.Access``).  ``caches``
    optionally names paging-structure caches: ``{"pde": TLB, "pdpte": TLB,
    "pml4e": TLB, "pml5e": TLB, "pcid": int, "vpid": int}`` (TLBs of kind
    "psc"; each lookup and fill advances that structure's clock).
    A successful walk sets A/D flags in ``mem`` and fills the caches; a
    faulting one changes nothing.  ``trace=True`` records every reference.

    >>> w = walk(mem, CpuState(cr3=root), 0x7F00_0000_0123, Access.WRITE | Access.USER)
    >>> w.ok, hex(w.host_address), w.references
    """
    cdef HostMemory m = _check_mem(mem)
    cdef paging_t p
    cdef walk_trace_t refs
    cdef walk_t out
    paging_from_cpu(&p, cpu, m.c.maxphyaddr)
    _check_root_in_memory(m, p.root, "cpu.cr3")
    cdef uint64_t address = _integer(va, "va", _U64_LIMIT)
    cdef uint32_t kind = _check_access(access)
    cdef bint with_trace = bool(trace)
    cdef _Caches c = None if caches is None else _setup_caches(caches, p.levels, 1, 0, p.pcid, 0)
    walk_trace_clear(&refs)
    _walk_native_kernel(&m.c, &p, address, kind, NULL if c is None else &c.c, &refs, &out)
    if c is not None:
        c.store_clocks()
    return walk_result(&out, &refs, with_trace)


def walk_ept(mem, ept, gpa, access=0, *, caches=None, trace=False):
    """Translate guest-physical ``gpa`` through ``ept`` (an access with no linear address).

    An EPT violation's exit qualification then has bit 7 (linear address
    valid) clear.  ``caches`` may name a nested TLB: ``{"nested": TLB}``.
    """
    cdef HostMemory m = _check_mem(mem)
    cdef ept_t e
    cdef walk_trace_t refs
    cdef walk_t out
    ept_from_config(&e, ept, m.c.maxphyaddr)
    _check_root_in_memory(m, e.root, "ept.root")
    cdef uint64_t address = _integer(gpa, "gpa", _U64_LIMIT)
    cdef uint32_t kind = _check_access(access)
    cdef bint with_trace = bool(trace)
    cdef _Caches c = None if caches is None else _setup_caches(caches, e.levels, 0, 1, 0, e.eptag)
    walk_trace_clear(&refs)
    _walk_ept_kernel(&m.c, &e, address, kind, NULL if c is None else &c.c, &refs, &out)
    if c is not None:
        c.store_clocks()
    return walk_result(&out, &refs, with_trace)


def walk_nested(mem, cpu, ept, gva, access=0, *, caches=None, trace=False):
    """The 2D walk of guest-linear ``gva``: guest tables from guest-physical ``cpu.cr3``, through ``ept``.

    ``caches`` may name paging-structure caches (keyed by linear address,
    caching guest-physical table frames) and a nested TLB (``"nested"``).
    """
    cdef HostMemory m = _check_mem(mem)
    cdef paging_t p
    cdef ept_t e
    cdef walk_trace_t refs
    cdef walk_t out
    paging_from_cpu(&p, cpu, m.c.maxphyaddr)
    ept_from_config(&e, ept, m.c.maxphyaddr)
    _check_root_in_memory(m, e.root, "ept.root")
    cdef uint64_t address = _integer(gva, "gva", _U64_LIMIT)
    cdef uint32_t kind = _check_access(access)
    cdef bint with_trace = bool(trace)
    cdef _Caches c = None if caches is None else _setup_caches(caches, p.levels, 1, 1, p.pcid, e.eptag)
    walk_trace_clear(&refs)
    _walk_nested_kernel(&m.c, &p, &e, address, kind, NULL if c is None else &c.c, &refs, &out)
    if c is not None:
        c.store_clocks()
    return walk_result(&out, &refs, with_trace)


def _time_walks(mem, cpu, addresses, ept=None, access=0):
    """Benchmark aid: walk every address once, GIL released, no caches, no counts.

    Returns ``(ns_per_walk, total_refs, faults)``.  Used to compare the
    kernels with ../shared/limit; not part of the API.
    """
    cdef HostMemory m = _check_mem(mem)
    cdef paging_t p
    cdef ept_t e
    cdef walk_t out
    paging_from_cpu(&p, cpu, m.c.maxphyaddr)
    if ept is not None:
        ept_from_config(&e, ept, m.c.maxphyaddr)
        _check_root_in_memory(m, e.root, "ept.root")
    else:
        _check_root_in_memory(m, p.root, "cpu.cr3")
    cdef uint32_t kind = _check_access(access)
    arr = np.ascontiguousarray(addresses, dtype=np.uint64)
    cdef const uint64_t[::1] va = arr
    cdef Py_ssize_t i, n = va.shape[0]
    cdef uint64_t refs = 0, faults = 0, sink = 0
    cdef bint nested = ept is not None
    if n == 0:
        raise ValueError("addresses: expected at least one address")
    start = perf_counter_ns()
    with nogil:
        if nested:
            for i in range(n):
                _walk_nested_kernel(&m.c, &p, &e, va[i], kind, NULL, <no_trace_t *>NULL, &out)
                refs += out.refs
                faults += out.status != WALK_OK
                sink ^= out.host_address
        else:
            for i in range(n):
                _walk_native_kernel(&m.c, &p, va[i], kind, NULL, <no_trace_t *>NULL, &out)
                refs += out.refs
                faults += out.status != WALK_OK
                sink ^= out.host_address
    elapsed = perf_counter_ns() - start
    return elapsed / n, refs, faults


def _c_constants():
    """The C-level constants of paging.pxd by name, for the test that they match fastmmu.arch."""
    return {
        "WALK_OK": WALK_OK, "WALK_PAGE_FAULT": WALK_PAGE_FAULT, "WALK_GP": WALK_GP,
        "WALK_EPT_VIOLATION": WALK_EPT_VIOLATION, "WALK_EPT_MISCONFIG": WALK_EPT_MISCONFIG,
        "WALK_TRAP": WALK_TRAP,
        "ATTR_W": ATTR_W, "ATTR_U": ATTR_U, "ATTR_XD": ATTR_XD, "ATTR_D": ATTR_D, "ATTR_G": ATTR_G,
        "ATTR_PKEY_SHIFT": ATTR_PKEY_SHIFT, "ATTR_EPT_R": ATTR_EPT_R, "ATTR_EPT_W": ATTR_EPT_W,
        "ATTR_EPT_X": ATTR_EPT_X, "ATTR_EPT_D": ATTR_EPT_D, "ATTR_MEMTYPE_SHIFT": ATTR_MEMTYPE_SHIFT,
        "ATTR_FRACTURED": ATTR_FRACTURED,
        "PFERR_P": PFERR_P, "PFERR_W": PFERR_W, "PFERR_U": PFERR_U, "PFERR_RSVD": PFERR_RSVD,
        "PFERR_ID": PFERR_ID, "PFERR_PK": PFERR_PK,
        "EQ_READ": EQ_READ, "EQ_WRITE": EQ_WRITE, "EQ_FETCH": EQ_FETCH, "EQ_GLA_VALID": EQ_GLA_VALID,
        "EQ_FINAL": EQ_FINAL, "EQ_GLA_USER": EQ_GLA_USER, "EQ_GLA_WRITABLE": EQ_GLA_WRITABLE,
        "EQ_GLA_XD": EQ_GLA_XD, "EQ_RIGHTS_SHIFT": EQ_RIGHTS_SHIFT,
    }


# Whether this module was built with FASTMMU_CYTHON_DEBUG=1 (checks on).
BUILD_DEBUG = FASTMMU_DEBUG
