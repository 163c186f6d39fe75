/*
 * limit_user.c -- ../shared/limit/limit.c (copied unchanged, 2026-12-07) plus
 * part (e), the path users run natively: a TLB in front of the native walk.
 * fastmmu's bench/run.py builds it (plain -O2, as limit.c) for its rows e and
 * f (f is compared with part (d) of this program, the same code as limit.c's).
 * Additions, all marked "(e)" below:
 *   - a second native world whose tables map 16 GiB (the Zipf trace's span;
 *     the other traces touch its first GiB), verified like the others;
 *   - (e) L1+L2 TLB -> native walk on an L2 miss; L1 alone -> native walk on
 *     an L1 miss; native walk on every access (no TLB), on all three traces;
 *   - -p PARTS selects the parts to run (default abcde);
 *   - four more table columns: exact L1 hits, L2 hits, walks and references.
 *
 * The original header follows.
 *
 * limit.c -- the "physical limit" anchor for fastmmu.
 *
 * Hand-written, portable C for the hot loops of an x86-64 memory-
 * virtualization simulator.  It is built with plain -O2 (no -march=native),
 * the same flags a portable wheel gets, so that "fastmmu's Cython core
 * reaches X% of hand-written C" compares like with like.
 *
 *   (a) set-associative TLB lookups with true LRU: L1 = 64 entries 4-way,
 *       L2 = 1536 entries 12-way (an Intel-like STLB), and L1 -> L2 chained;
 *       keys are (ASID/VPID, virtual page number), 4 KiB pages;
 *   (b) native 4-level page walk on every access, page tables kept in one
 *       flat uint64 array that stands for physical memory (a table is one
 *       4 KiB frame = 512 entries);
 *   (c) nested (2D) walk: guest 4-level tables live in guest-physical
 *       memory, and every guest-physical address (each guest table entry and
 *       the final data address) goes through a 4-level EPT in host memory:
 *       4 * (4 + 1) + 4 = 24 memory references per walk;
 *   (d) the full pipeline: L1 TLB -> L2 TLB -> 2D walk on an L2 miss.
 *
 * Traces are generated in-process from fixed seeds (splitmix64) before any
 * timing starts; traces.py regenerates them bit for bit with numpy (compare
 * the printed checksums).  Every measurement is repeated (-r, default 5);
 * the median and the minimum are printed.
 *
 * Build: make        Run: ./limit [-n accesses] [-r repetitions] [-P]
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS, MADV_HUGEPAGE */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                */
/* ------------------------------------------------------------------------ */

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ULL << PAGE_SHIFT)
#define PAGE_MASK (PAGE_SIZE - 1)
#define GIB (1ULL << 30)

/* A trace entry is ASID << 48 | virtual address (48-bit, user half).  The
 * TLB key is then simply entry >> 12 = ASID << 36 | virtual page number. */
#define ASID_SHIFT 48
#define VA_MASK ((1ULL << ASID_SHIFT) - 1)
#define TRACE_ASID 1ULL                   /* every access uses ASID/VPID 1 */
#define VA_BASE 0x00007f0000000000ULL     /* start of the mapped region    */

#define SMALL_SPAN (1ULL * GIB)           /* sequential and uniform traces */
#define ZIPF_SPAN (16ULL * GIB)           /* Zipf trace                    */
#define ZIPF_PAGES (ZIPF_SPAN >> PAGE_SHIFT) /* 4 Mi pages = 2^22          */
#define ZIPF_ALPHA 0.99
#define ZIPF_SCATTER 0x9E3779B1ULL        /* odd: rank -> page bijection   */

#define SEED_RANDOM 0x5EED0001ULL
#define SEED_ZIPF 0x5EED0002ULL

/* x86-64 page-table entry bits (guest and native tables). */
#define PTE_P (1ULL << 0)                 /* present                       */
#define PTE_RW (1ULL << 1)
#define PTE_US (1ULL << 2)
#define PTE_PS (1ULL << 7)                /* 1 GiB (PDPTE) / 2 MiB (PDE)   */
/* EPT entry bits: an entry is present when any of R/W/X is set. */
#define EPT_RWX 7ULL
#define EPT_WB (6ULL << 3)                /* leaf memory type: write-back  */
#define ADDR_MASK 0x000FFFFFFFFFF000ULL   /* bits 12..51: frame address    */
#define FAULT (~0ULL)                     /* walk result: not present      */

/* Physical layout of the test systems (frame numbers). */
#define NATIVE_DATA_PFN 0x200000ULL       /* native data pages: 8 GiB up   */
#define GUEST_PT_GPFN 0x100ULL            /* guest page tables: 1 MiB up   */
#define GUEST_DATA_GPFN 0x100000ULL       /* guest data pages: 4 GiB up    */
#define HOST_DATA_PFN 0x1000000ULL        /* host frames behind guest data */

#define L1_ENTRIES 64
#define L1_WAYS 4
#define L2_ENTRIES 1536
#define L2_WAYS 12

#define MAX_REPS 31

/* Hot helpers are forced inline so that their counters and the TLB geometry
 * stay in registers inside the measured loops (GCC/Clang extension). */
#define HOT static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------ */
/* Small utilities                                                          */
/* ------------------------------------------------------------------------ */

static volatile uint64_t sink; /* keeps results alive: no dead-code removal */

static void die(const char *msg)
{
    fprintf(stderr, "limit: %s\n", msg);
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        die("out of memory");
    return p;
}

/* Large arrays (traces, physical memory) come from here.  numpy asks the
 * kernel for transparent huge pages (madvise(MADV_HUGEPAGE)) on arrays of
 * 4 MiB and more, so a numpy-backed simulator gets 2 MiB pages for its
 * physical-memory buffer; we do the same by default to compare like with
 * like (-P: plain 4 KiB pages).  Zero-filled; released at exit. */
#define HUGE_2M (2ULL << 20)
static int use_hugepages = 1;

static void *big_alloc(size_t bytes)
{
    size_t len = (bytes + 2 * HUGE_2M - 1) & ~(HUGE_2M - 1);
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("out of memory");
    p = (char *)(((uintptr_t)p + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
    if (use_hugepages)
        madvise(p, len - HUGE_2M, MADV_HUGEPAGE);
    return p;
}

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------ */
/* Traces (generated before timing; mirrored by traces.py)                  */
/* ------------------------------------------------------------------------ */

static const uint64_t ASID_BITS = TRACE_ASID << ASID_SHIFT;

/* (i) 8-byte stride from VA_BASE, wrapping at 1 GiB. */
static void trace_sequential(uint64_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        t[i] = ASID_BITS | (VA_BASE + ((i * 8) & (SMALL_SPAN - 1)));
}

/* (ii) uniform over the 2^27 8-byte-aligned addresses of 1 GiB. */
static void trace_random(uint64_t *t, size_t n)
{
    uint64_t s = SEED_RANDOM;
    for (size_t i = 0; i < n; i++)
        t[i] = ASID_BITS | (VA_BASE + ((splitmix64(&s) >> 37) << 3));
}

/* (iii) Zipf(alpha = 0.99) over the 4 Mi pages of 16 GiB: page of rank k
 * (k = 0 most popular) has weight (k + 1)^-alpha.  Ranks are scattered over
 * the region by an odd multiplier mod 2^22, so hot pages are not adjacent.
 * Sampling: inverse CDF by binary search (exact, done once, untimed). */
static void trace_zipf(uint64_t *t, size_t n)
{
    double *cdf = xcalloc(ZIPF_PAGES, sizeof *cdf);   /* untimed, any pages */
    double acc = 0.0;
    for (uint64_t k = 0; k < ZIPF_PAGES; k++) {
        acc += pow((double)(k + 1), -ZIPF_ALPHA);
        cdf[k] = acc;
    }
    for (uint64_t k = 0; k < ZIPF_PAGES; k++)
        cdf[k] /= acc;

    uint64_t s = SEED_ZIPF;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(&s);
        double u = (double)(r >> 11) * 0x1.0p-53;   /* uniform in [0, 1) */
        uint64_t lo = 0, hi = ZIPF_PAGES - 1;        /* first k: cdf[k] > u */
        while (lo < hi) {
            uint64_t mid = (lo + hi) / 2;
            if (cdf[mid] > u)
                hi = mid;
            else
                lo = mid + 1;
        }
        uint64_t page = (lo * ZIPF_SCATTER) & (ZIPF_PAGES - 1);
        t[i] = ASID_BITS | (VA_BASE + (page << PAGE_SHIFT) + ((r & 511) << 3));
    }
    free(cdf);
}

/* Order-dependent checksum, sum of t[i] * (2i + 1) mod 2^64 (see traces.py). */
static uint64_t trace_checksum(const uint64_t *t, size_t n)
{
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++)
        h += t[i] * (2 * (uint64_t)i + 1);
    return h;
}

/* ------------------------------------------------------------------------ */
/* Set-associative TLB with true LRU                                        */
/* ------------------------------------------------------------------------ */

/* Structure of arrays, entry (set, way) at index set * ways + way.  The tag
 * is key | TAG_VALID (0 = empty way).  LRU uses timestamps: the caller passes
 * "now" (the access number, >= 1), a hit or fill stores it, and the victim is
 * the way with the smallest stamp (empty ways have stamp 0, so they go
 * first).  Using the access number as clock keeps the TLB free of any global
 * counter in the hot loop. */
#define TAG_VALID (1ULL << 63)

typedef struct {
    unsigned ways;
    uint64_t set_mask;  /* sets - 1 (sets is a power of two) */
    uint64_t *tag;
    uint64_t *pfn;      /* cached translation: frame number */
    uint64_t *stamp;    /* time of last use */
} tlb_t;

static void tlb_init(tlb_t *t, unsigned entries, unsigned ways)
{
    unsigned sets = entries / ways;
    if (sets == 0 || (sets & (sets - 1)) || sets * ways != entries)
        die("TLB sets must be a power of two");
    t->ways = ways;
    t->set_mask = sets - 1;
    t->tag = xcalloc(entries, sizeof *t->tag);
    t->pfn = xcalloc(entries, sizeof *t->pfn);
    t->stamp = xcalloc(entries, sizeof *t->stamp);
}

static void tlb_flush(tlb_t *t)
{
    size_t entries = (size_t)(t->set_mask + 1) * t->ways;
    memset(t->tag, 0, entries * sizeof *t->tag);
    memset(t->stamp, 0, entries * sizeof *t->stamp);
}

static void tlb_free(tlb_t *t)
{
    free(t->tag);
    free(t->pfn);
    free(t->stamp);
}

/* Returns 1 and sets *pfn on a hit (and makes the entry most recent). */
HOT int tlb_lookup(tlb_t *t, uint64_t key, uint64_t now, uint64_t *pfn)
{
    size_t base = (size_t)(key & t->set_mask) * t->ways;
    uint64_t want = key | TAG_VALID;
    for (unsigned w = 0; w < t->ways; w++) {
        if (t->tag[base + w] == want) {
            t->stamp[base + w] = now;
            *pfn = t->pfn[base + w];
            return 1;
        }
    }
    return 0;
}

/* Inserts key -> pfn, evicting the least recently used way of its set. */
HOT void tlb_fill(tlb_t *t, uint64_t key, uint64_t pfn, uint64_t now)
{
    size_t base = (size_t)(key & t->set_mask) * t->ways;
    size_t victim = base;
    uint64_t oldest = t->stamp[base];
    for (size_t i = base + 1; i < base + t->ways; i++) {
        /* Branch-free "if (stamp < oldest) take it": on random traces the
         * comparison is unpredictable and a branch here mispredicts often. */
        uint64_t s = t->stamp[i];
        uint64_t take = -(uint64_t)(s < oldest);   /* all ones or zero */
        oldest ^= (oldest ^ s) & take;
        victim ^= (victim ^ i) & take;
    }
    t->tag[victim] = key | TAG_VALID;
    t->pfn[victim] = pfn;
    t->stamp[victim] = now;
}

/* Stand-in for a page walk in part (a): any cheap function of the key. */
HOT uint64_t fake_translate(uint64_t key)
{
    return (key ^ 0x5A5A5ULL) & 0xFFFFFFFFFULL;
}

/* ------------------------------------------------------------------------ */
/* Physical memory and page tables                                          */
/* ------------------------------------------------------------------------ */

/* Physical memory as one flat, zero-filled array of 64-bit words; physical
 * address pa is word pa >> 3.  Frames are handed out by a bump allocator;
 * frame 0 is never used.  Only page-table frames are backed: data pages get
 * frame numbers past the end of the array and are never read. */
typedef struct {
    uint64_t *words;
    uint64_t nframes;
    uint64_t used;
} physmem_t;

static void physmem_init(physmem_t *m, uint64_t nframes)
{
    m->words = big_alloc(nframes * PAGE_SIZE);
    m->nframes = nframes;
    m->used = 1;
}

static uint64_t alloc_frame(physmem_t *m)
{
    if (m->used >= m->nframes)
        die("physical memory exhausted");
    return (m->used++) << PAGE_SHIFT;
}

/* One 4-level radix walk of addr in the table rooted at root (a physical
 * address in mem).  Levels 3..0 = PML4, PDPT, PD, PT; each level indexes
 * nine address bits and costs one memory reference.  `present` is PTE_P for
 * x86 tables and EPT_RWX for EPT tables; PS at level 2 or 1 ends the walk in
 * a 1 GiB or 2 MiB page (never the case here, but the check is paid). */
HOT uint64_t walk4(const uint64_t *mem, uint64_t root, uint64_t addr,
                             uint64_t present, uint64_t *refs)
{
    uint64_t table = root & ADDR_MASK;
#pragma GCC unroll 4
    for (int level = 3; level >= 0; level--) {
        unsigned shift = PAGE_SHIFT + 9 * (unsigned)level;
        uint64_t e = mem[(table >> 3) + ((addr >> shift) & 511)];
        (*refs)++;
        if (!(e & present))
            return FAULT;
        if (level == 0 || (level <= 2 && (e & PTE_PS))) {
            uint64_t off = (1ULL << shift) - 1;
            return (e & ADDR_MASK & ~off) | (addr & off);
        }
        table = e & ADDR_MASK;
    }
    return FAULT; /* not reached: level 0 always returns */
}

/* 2D walk of guest virtual address gva: the guest's 4-level walk, where
 * each guest table entry's guest-physical address and the final guest-
 * physical data address are translated by a 4-level EPT walk. */
HOT uint64_t walk_2d(const uint64_t *mem, uint64_t eptp, uint64_t gcr3,
                               uint64_t gva, uint64_t *refs)
{
    uint64_t gtable = gcr3 & ADDR_MASK;                  /* guest-physical */
#pragma GCC unroll 4
    for (int level = 3; level >= 0; level--) {
        unsigned shift = PAGE_SHIFT + 9 * (unsigned)level;
        uint64_t gpte_gpa = gtable + ((gva >> shift) & 511) * 8;
        uint64_t gpte_hpa = walk4(mem, eptp, gpte_gpa, EPT_RWX, refs); /* 4 */
        if (gpte_hpa == FAULT)
            return FAULT;                                /* EPT violation */
        uint64_t e = mem[gpte_hpa >> 3];                 /* 1 */
        (*refs)++;
        if (!(e & PTE_P))
            return FAULT;                                /* guest #PF */
        if (level == 0 || (level <= 2 && (e & PTE_PS))) {
            uint64_t off = (1ULL << shift) - 1;
            uint64_t gpa = (e & ADDR_MASK & ~off) | (gva & off);
            return walk4(mem, eptp, gpa, EPT_RWX, refs);  /* 4 */
        }
        gtable = e & ADDR_MASK;
    }
    return FAULT; /* not reached */
}

/* Maps the 4 KiB page at addr to target in tables that live directly in m
 * (native tables and EPT tables), allocating missing tables. */
static void map4(physmem_t *m, uint64_t root, uint64_t addr, uint64_t target,
                 uint64_t present, uint64_t table_flags, uint64_t leaf_flags)
{
    uint64_t table = root;
    for (int level = 3; level > 0; level--) {
        uint64_t *e = &m->words[(table >> 3) +
                                ((addr >> (PAGE_SHIFT + 9 * level)) & 511)];
        if (!(*e & present))
            *e = alloc_frame(m) | table_flags;
        table = *e & ADDR_MASK;
    }
    m->words[(table >> 3) + ((addr >> PAGE_SHIFT) & 511)] = target | leaf_flags;
}

/* A guest: host memory holds the EPT and (behind it) the guest's tables. */
typedef struct {
    physmem_t host;
    uint64_t eptp;       /* host-physical address of the EPT PML4    */
    uint64_t gcr3;       /* guest-physical address of the guest PML4 */
    uint64_t next_gpfn;  /* guest-physical allocator for guest tables */
} vm_t;

static void ept_map(vm_t *vm, uint64_t gpa, uint64_t hpa)
{
    map4(&vm->host, vm->eptp, gpa, hpa, EPT_RWX, EPT_RWX, EPT_RWX | EPT_WB);
}

/* A new guest table: a guest-physical frame backed by a fresh host frame. */
static uint64_t vm_alloc_table(vm_t *vm)
{
    uint64_t gpa = (vm->next_gpfn++) << PAGE_SHIFT;
    ept_map(vm, gpa, alloc_frame(&vm->host));
    return gpa;
}

/* The host word behind guest-physical address gpa. */
static uint64_t *vm_word(vm_t *vm, uint64_t gpa)
{
    uint64_t refs = 0;
    uint64_t hpa = walk4(vm->host.words, vm->eptp, gpa, EPT_RWX, &refs);
    if (hpa == FAULT)
        die("EPT violation while building guest tables");
    return &vm->host.words[hpa >> 3];
}

static void vm_init(vm_t *vm, uint64_t host_frames)
{
    physmem_init(&vm->host, host_frames);
    vm->eptp = alloc_frame(&vm->host);
    vm->next_gpfn = GUEST_PT_GPFN;
    vm->gcr3 = vm_alloc_table(vm);
}

/* Maps guest virtual page gva -> guest-physical gpa in the guest's tables,
 * and gpa -> hpa in the EPT. */
static void vm_map_page(vm_t *vm, uint64_t gva, uint64_t gpa, uint64_t hpa)
{
    uint64_t gtable = vm->gcr3;
    for (int level = 3; level > 0; level--) {
        uint64_t *e = vm_word(vm, gtable + ((gva >> (PAGE_SHIFT + 9 * level)) & 511) * 8);
        if (!(*e & PTE_P))
            *e = vm_alloc_table(vm) | PTE_P | PTE_RW | PTE_US;
        gtable = *e & ADDR_MASK;
    }
    *vm_word(vm, gtable + ((gva >> PAGE_SHIFT) & 511) * 8) = gpa | PTE_P | PTE_RW | PTE_US;
    ept_map(vm, gpa, hpa);
}

/* Expected translations (closed form, used to verify the walkers). */
static uint64_t native_expected(uint64_t va)
{
    return ((NATIVE_DATA_PFN + ((va - VA_BASE) >> PAGE_SHIFT)) << PAGE_SHIFT) | (va & PAGE_MASK);
}

static uint64_t guest_gpa_expected(uint64_t gva)
{
    return ((GUEST_DATA_GPFN + ((gva - VA_BASE) >> PAGE_SHIFT)) << PAGE_SHIFT) | (gva & PAGE_MASK);
}

static uint64_t nested_expected(uint64_t gva)
{
    return guest_gpa_expected(gva) + (HOST_DATA_PFN << PAGE_SHIFT);
}

/* ------------------------------------------------------------------------ */
/* The measured loops.  Each reports hits, walks and memory references     */
/* through the stats struct; timing happens in the caller.  TLBs are passed */
/* by value (the struct holds only geometry and array pointers) so that the */
/* geometry stays in registers: no store into a TLB array can alias it.     */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint64_t l1_hits, l2_hits, walks, refs;
} stats_t;

/* (a) one TLB alone; a miss fills with a synthetic translation. */
static void run_tlb_single(tlb_t t, const uint64_t *tr, size_t n, stats_t *st)
{
    uint64_t hits = 0, acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = tr[i] >> PAGE_SHIFT, pfn, now = i + 1;
        if (tlb_lookup(&t, key, now, &pfn)) {
            hits++;
        } else {
            pfn = fake_translate(key);
            tlb_fill(&t, key, pfn, now);
        }
        acc ^= pfn;
    }
    sink ^= acc;
    st->l1_hits = hits;
    st->walks = n - hits;
}

/* (a) L1 -> L2; an L2 hit refills L1, an L2 miss fills both. */
static void run_tlb_chain(tlb_t t1, tlb_t t2, const uint64_t *tr, size_t n, stats_t *st)
{
    tlb_t *l1 = &t1, *l2 = &t2;
    uint64_t h1 = 0, h2 = 0, acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = tr[i] >> PAGE_SHIFT, pfn, now = i + 1;
        if (tlb_lookup(l1, key, now, &pfn)) {
            h1++;
        } else if (tlb_lookup(l2, key, now, &pfn)) {
            h2++;
            tlb_fill(l1, key, pfn, now);
        } else {
            pfn = fake_translate(key);
            tlb_fill(l2, key, pfn, now);
            tlb_fill(l1, key, pfn, now);
        }
        acc ^= pfn;
    }
    sink ^= acc;
    st->l1_hits = h1;
    st->l2_hits = h2;
    st->walks = n - h1 - h2;
}

/* (b) native walk on every access. */
static void run_walk_native(const physmem_t *m, uint64_t cr3, const uint64_t *tr,
                            size_t n, stats_t *st)
{
    uint64_t refs = 0, acc = 0;
    for (size_t i = 0; i < n; i++)
        acc ^= walk4(m->words, cr3, tr[i] & VA_MASK, PTE_P, &refs);
    sink ^= acc;
    st->walks = n;
    st->refs = refs;
}

/* (c) 2D walk on every access. */
static void run_walk_2d(const vm_t *vm, const uint64_t *tr, size_t n, stats_t *st)
{
    uint64_t refs = 0, acc = 0;
    for (size_t i = 0; i < n; i++)
        acc ^= walk_2d(vm->host.words, vm->eptp, vm->gcr3, tr[i] & VA_MASK, &refs);
    sink ^= acc;
    st->walks = n;
    st->refs = refs;
}

/* (d) L1 -> L2 -> 2D walk; the TLBs cache guest-virtual -> host-physical. */
static void run_pipeline(tlb_t t1, tlb_t t2, const vm_t *vm, const uint64_t *tr,
                         size_t n, stats_t *st)
{
    tlb_t *l1 = &t1, *l2 = &t2;
    const uint64_t *mem = vm->host.words;
    uint64_t h1 = 0, h2 = 0, refs = 0, faults = 0, acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = tr[i] >> PAGE_SHIFT, pfn, now = i + 1;
        if (tlb_lookup(l1, key, now, &pfn)) {
            h1++;
        } else if (tlb_lookup(l2, key, now, &pfn)) {
            h2++;
            tlb_fill(l1, key, pfn, now);
        } else {
            uint64_t hpa = walk_2d(mem, vm->eptp, vm->gcr3, tr[i] & VA_MASK, &refs);
            if (hpa == FAULT) {   /* would raise a fault; nothing is cached */
                faults++;
                continue;
            }
            pfn = hpa >> PAGE_SHIFT;
            tlb_fill(l2, key, pfn, now);
            tlb_fill(l1, key, pfn, now);
        }
        acc ^= (pfn << PAGE_SHIFT) | (tr[i] & PAGE_MASK);  /* host-physical */
    }
    sink ^= acc;
    if (faults)
        die("unexpected fault in pipeline");
    st->l1_hits = h1;
    st->l2_hits = h2;
    st->walks = n - h1 - h2;
    st->refs = refs;
}

/* (e) L1 -> L2 -> native walk on an L2 miss (run_pipeline with walk4). */
static void run_native_pipeline(tlb_t t1, tlb_t t2, const physmem_t *m, uint64_t cr3,
                                const uint64_t *tr, size_t n, stats_t *st)
{
    tlb_t *l1 = &t1, *l2 = &t2;
    const uint64_t *mem = m->words;
    uint64_t h1 = 0, h2 = 0, refs = 0, faults = 0, acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = tr[i] >> PAGE_SHIFT, pfn, now = i + 1;
        if (tlb_lookup(l1, key, now, &pfn)) {
            h1++;
        } else if (tlb_lookup(l2, key, now, &pfn)) {
            h2++;
            tlb_fill(l1, key, pfn, now);
        } else {
            uint64_t pa = walk4(mem, cr3, tr[i] & VA_MASK, PTE_P, &refs);
            if (pa == FAULT) {
                faults++;
                continue;
            }
            pfn = pa >> PAGE_SHIFT;
            tlb_fill(l2, key, pfn, now);
            tlb_fill(l1, key, pfn, now);
        }
        acc ^= (pfn << PAGE_SHIFT) | (tr[i] & PAGE_MASK);
    }
    sink ^= acc;
    if (faults)
        die("unexpected fault in native pipeline");
    st->l1_hits = h1;
    st->l2_hits = h2;
    st->walks = n - h1 - h2;
    st->refs = refs;
}

/* (e) L1 alone -> native walk on an L1 miss. */
static void run_native_l1(tlb_t t1, const physmem_t *m, uint64_t cr3,
                          const uint64_t *tr, size_t n, stats_t *st)
{
    tlb_t *l1 = &t1;
    const uint64_t *mem = m->words;
    uint64_t h1 = 0, refs = 0, faults = 0, acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = tr[i] >> PAGE_SHIFT, pfn, now = i + 1;
        if (tlb_lookup(l1, key, now, &pfn)) {
            h1++;
        } else {
            uint64_t pa = walk4(mem, cr3, tr[i] & VA_MASK, PTE_P, &refs);
            if (pa == FAULT) {
                faults++;
                continue;
            }
            pfn = pa >> PAGE_SHIFT;
            tlb_fill(l1, key, pfn, now);
        }
        acc ^= (pfn << PAGE_SHIFT) | (tr[i] & PAGE_MASK);
    }
    sink ^= acc;
    if (faults)
        die("unexpected fault in native L1 pipeline");
    st->l1_hits = h1;
    st->walks = n - h1;
    st->refs = refs;
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */
/* ------------------------------------------------------------------------ */

enum kind { K_L1, K_L2, K_CHAIN, K_NATIVE, K_2D, K_PIPE, K_E_CHAIN, K_E_L1, K_E_WALK };

typedef struct {
    tlb_t l1, l2;
    physmem_t native;
    uint64_t native_cr3;
    physmem_t native16;     /* (e): native tables mapping 16 GiB */
    uint64_t native16_cr3;
    vm_t vm;
} world_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_header(void)
{
    printf("| part | structure | workload | ns/access (median) | ns/access (min) "
           "| M accesses/s | L1 hit | L2 hit (of lookups) | walks/access | refs/walk "
           "| L1 hits | L2 hits | walks | refs |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
}

static void measure(world_t *w, enum kind kind, const char *workload,
                    const uint64_t *tr, size_t n, int reps)
{
    static const char *part[] = {"a", "a", "a", "b", "c", "d", "e", "e", "e"};
    static const char *name[] = {"L1 TLB 64e/4w", "L2 TLB 1536e/12w", "L1+L2 TLB",
                                 "native 4-level walk", "2D walk (EPT)",
                                 "L1+L2 TLB + 2D walk", "L1+L2 TLB + native walk",
                                 "L1 TLB 64e/4w + native walk", "native walk, no TLB"};
    double ns[MAX_REPS];
    stats_t st = {0};

    for (int r = 0; r < reps; r++) {
        memset(&st, 0, sizeof st);
        tlb_flush(&w->l1);
        tlb_flush(&w->l2);
        double t0 = now_sec();
        switch (kind) {
        case K_L1: run_tlb_single(w->l1, tr, n, &st); break;
        case K_L2: run_tlb_single(w->l2, tr, n, &st); break;
        case K_CHAIN: run_tlb_chain(w->l1, w->l2, tr, n, &st); break;
        case K_NATIVE: run_walk_native(&w->native, w->native_cr3, tr, n, &st); break;
        case K_2D: run_walk_2d(&w->vm, tr, n, &st); break;
        case K_PIPE: run_pipeline(w->l1, w->l2, &w->vm, tr, n, &st); break;
        case K_E_CHAIN: run_native_pipeline(w->l1, w->l2, &w->native16, w->native16_cr3, tr, n, &st); break;
        case K_E_L1: run_native_l1(w->l1, &w->native16, w->native16_cr3, tr, n, &st); break;
        case K_E_WALK: run_walk_native(&w->native16, w->native16_cr3, tr, n, &st); break;
        }
        ns[r] = (now_sec() - t0) * 1e9 / (double)n;
    }
    qsort(ns, (size_t)reps, sizeof ns[0], cmp_double);
    double med = ns[reps / 2];

    char l1[32] = "-", l2[32] = "-", refs[32] = "-";
    uint64_t l2_lookups = n;
    if (kind == K_L1 || kind == K_CHAIN || kind == K_PIPE || kind == K_E_CHAIN || kind == K_E_L1) {
        snprintf(l1, sizeof l1, "%.3f%%", 100.0 * (double)st.l1_hits / (double)n);
        l2_lookups = n - st.l1_hits;
    }
    if (kind == K_L2)
        snprintf(l2, sizeof l2, "%.3f%%", 100.0 * (double)st.l1_hits / (double)n);
    if (kind == K_CHAIN || kind == K_PIPE || kind == K_E_CHAIN)
        snprintf(l2, sizeof l2, "%.3f%%",
                 l2_lookups ? 100.0 * (double)st.l2_hits / (double)l2_lookups : 0.0);
    if (kind >= K_NATIVE)
        snprintf(refs, sizeof refs, "%.2f", st.walks ? (double)st.refs / (double)st.walks : 0.0);

    printf("| %s | %s | %s | %.2f | %.2f | %.1f | %s | %s | %.5f | %s | %llu | %llu | %llu | %llu |\n",
           part[kind], name[kind], workload, med, ns[0], 1e3 / med, l1, l2,
           (double)st.walks / (double)n, refs,
           (unsigned long long)(kind == K_L2 ? 0 : st.l1_hits),   /* K_L2 counts its hits in l1_hits */
           (unsigned long long)(kind == K_L2 ? st.l1_hits : st.l2_hits), (unsigned long long)st.walks,
           (unsigned long long)st.refs);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    size_t n = 10000000;
    int reps = 5, opt;
    const char *parts = "abcde";
    while ((opt = getopt(argc, argv, "n:r:p:Ph")) != -1) {
        switch (opt) {
        case 'n': n = (size_t)strtoull(optarg, NULL, 10); break;
        case 'p': parts = optarg; break;
        case 'r': reps = atoi(optarg); break;
        case 'P': use_hugepages = 0; break;
        default:
            fprintf(stderr, "usage: %s [-n accesses] [-r repetitions] [-p parts] [-P]\n"
                            "  -p  the parts to run, e.g. de (default abcde)\n"
                            "  -P  no transparent huge pages for large arrays\n", argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (n == 0 || reps < 1 || reps > MAX_REPS)
        die("need -n >= 1 and 1 <= -r <= 31");

    /* Traces. */
    double t0 = now_sec();
    uint64_t *seq = big_alloc(n * sizeof *seq);
    uint64_t *rnd = big_alloc(n * sizeof *rnd);
    uint64_t *zipf = big_alloc(n * sizeof *zipf);
    trace_sequential(seq, n);
    trace_random(rnd, n);
    trace_zipf(zipf, n);
    printf("traces: %zu accesses each, generated in %.2f s; checksums "
           "seq=%016llx rand=%016llx zipf=%016llx\n",
           n, now_sec() - t0, (unsigned long long)trace_checksum(seq, n),
           (unsigned long long)trace_checksum(rnd, n),
           (unsigned long long)trace_checksum(zipf, n));

    /* Page tables: native 1 GiB, guest 16 GiB (+ EPT for all of it). */
    world_t w;
    t0 = now_sec();
    tlb_init(&w.l1, L1_ENTRIES, L1_WAYS);
    tlb_init(&w.l2, L2_ENTRIES, L2_WAYS);
    physmem_init(&w.native, 1024);
    w.native_cr3 = alloc_frame(&w.native);
    for (uint64_t va = VA_BASE; va < VA_BASE + SMALL_SPAN; va += PAGE_SIZE)
        map4(&w.native, w.native_cr3, va, native_expected(va), PTE_P,
             PTE_P | PTE_RW | PTE_US, PTE_P | PTE_RW | PTE_US);
    physmem_init(&w.native16, 8300);                 /* (e) 16 GiB: 8210 frames */
    w.native16_cr3 = alloc_frame(&w.native16);
    for (uint64_t va = VA_BASE; va < VA_BASE + ZIPF_SPAN; va += PAGE_SIZE)
        map4(&w.native16, w.native16_cr3, va, native_expected(va), PTE_P,
             PTE_P | PTE_RW | PTE_US, PTE_P | PTE_RW | PTE_US);
    vm_init(&w.vm, 20000);
    for (uint64_t va = VA_BASE; va < VA_BASE + ZIPF_SPAN; va += PAGE_SIZE)
        vm_map_page(&w.vm, va, guest_gpa_expected(va), nested_expected(va));
    printf("tables: native %llu frames, native 16 GiB %llu frames, guest+EPT %llu host frames "
           "(%.1f MiB), built in %.2f s\n",
           (unsigned long long)w.native.used, (unsigned long long)w.native16.used,
           (unsigned long long)w.vm.host.used, w.vm.host.used / 256.0, now_sec() - t0);

    /* Verify the walkers against the closed-form mappings. */
    for (size_t i = 0; i < n && i < 1000000; i++) {
        uint64_t refs = 0, va = rnd[i] & VA_MASK, gva = zipf[i] & VA_MASK;
        if (walk4(w.native.words, w.native_cr3, va, PTE_P, &refs) != native_expected(va) ||
            refs != 4)
            die("native walk mismatch");
        refs = 0;
        if (walk_2d(w.vm.host.words, w.vm.eptp, w.vm.gcr3, gva, &refs) != nested_expected(gva) ||
            refs != 24)
            die("2D walk mismatch");
        /* (e) the 16 GiB native tables, on all three traces */
        const uint64_t *e_tr[3] = {seq, rnd, zipf};
        for (int k = 0; k < 3; k++) {
            va = e_tr[k][i] & VA_MASK;
            refs = 0;
            if (walk4(w.native16.words, w.native16_cr3, va, PTE_P, &refs) != native_expected(va) ||
                refs != 4)
                die("native 16 GiB walk mismatch");
        }
    }
    printf("walkers verified (native: 4 refs, 2D: 24 refs per walk)\n");
    printf("%d repetitions per row; median and min in ns per access; "
           "large arrays on %s pages\n\n", reps, use_hugepages ? "2 MiB (THP)" : "4 KiB");

    print_header();
    if (strchr(parts, 'a')) {
        measure(&w, K_L1, "sequential 8 B, 1 GiB", seq, n, reps);
        measure(&w, K_L1, "uniform, 1 GiB", rnd, n, reps);
        measure(&w, K_L1, "Zipf 0.99, 16 GiB", zipf, n, reps);
        measure(&w, K_L2, "sequential 8 B, 1 GiB", seq, n, reps);
        measure(&w, K_L2, "uniform, 1 GiB", rnd, n, reps);
        measure(&w, K_L2, "Zipf 0.99, 16 GiB", zipf, n, reps);
        measure(&w, K_CHAIN, "sequential 8 B, 1 GiB", seq, n, reps);
        measure(&w, K_CHAIN, "uniform, 1 GiB", rnd, n, reps);
        measure(&w, K_CHAIN, "Zipf 0.99, 16 GiB", zipf, n, reps);
    }
    if (strchr(parts, 'b'))
        measure(&w, K_NATIVE, "uniform, 1 GiB", rnd, n, reps);
    if (strchr(parts, 'c')) {
        measure(&w, K_2D, "uniform, 1 GiB", rnd, n, reps);
        measure(&w, K_2D, "Zipf 0.99, 16 GiB", zipf, n, reps);
    }
    if (strchr(parts, 'd')) {
        measure(&w, K_PIPE, "uniform, 1 GiB", rnd, n, reps);
        measure(&w, K_PIPE, "Zipf 0.99, 16 GiB", zipf, n, reps);
    }
    if (strchr(parts, 'e')) {
        static const enum kind e_kinds[3] = {K_E_CHAIN, K_E_L1, K_E_WALK};
        for (int k = 0; k < 3; k++) {
            measure(&w, e_kinds[k], "sequential 8 B, 1 GiB", seq, n, reps);
            measure(&w, e_kinds[k], "uniform, 1 GiB", rnd, n, reps);
            measure(&w, e_kinds[k], "Zipf 0.99, 16 GiB", zipf, n, reps);
        }
    }

    tlb_free(&w.l1);
    tlb_free(&w.l2);
    return 0;  /* big_alloc'd arrays are released at exit */
}
