# cython: language_level=3
"""Downstream code reading fastmmu's host memory through the C-level contract, without the GIL."""

from fastmmu._core.memory cimport HostMemory, mem_read
from fastmmu._core.types cimport ENTRIES_PER_TABLE, PTE_P, hpa_t, pte_t


def read_entry(HostMemory m, hpa_t addr):
    """The 64-bit entry at host-physical ``addr``, read with the GIL released."""
    cdef pte_t value
    with nogil:
        value = mem_read(&m.c, addr)
    return value


def count_present(HostMemory m, hpa_t table):
    """How many of the 512 entries of the table at ``table`` have P set (a nogil loop)."""
    cdef int i, present = 0
    with nogil:
        for i in range(ENTRIES_PER_TABLE):
            if mem_read(&m.c, table + 8 * <hpa_t>i) & PTE_P:
                present += 1
    return present


def pte_p():
    """The value of PTE_P as downstream code sees it."""
    return PTE_P
