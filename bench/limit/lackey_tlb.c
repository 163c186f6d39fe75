/* lackey_tlb.c: the C floor of `fastmmu compare --trace FILE` (bench/run.py, row i).
 *
 * It reads a valgrind lackey trace exactly as ../../../shared/limit/lackey.c
 * does (16 MiB blocks; "I  addr,size", " L addr,size", " S addr,size",
 * " M addr,size"; lines starting with '=' are valgrind's own and skipped),
 * once, and runs every record's address through an L1+L2 TLB once per mode
 * (four modes: native, brute force, shadow, nested), with the TLB code of
 * limit.c: L1 64 entries 4-way, L2 1536 entries 12-way, true LRU by
 * timestamps and a branch-free victim search; an L2 hit refills L1, a miss
 * fills both with a synthetic translation (no walk).  That is the least any
 * simulator of the four modes must do per access: no walks, no faults, no
 * hypervisor.  It prints JSON: records, skipped lines, a checksum, the hits
 * of one mode (the four see the same stream) and the seconds.
 *
 *   make lackey_tlb && ./lackey_tlb TRACE
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE_SHIFT 12
#define MODES 4
#define TAG_VALID (1ULL << 63)
#define HOT static inline __attribute__((always_inline))

/* -- the TLB of limit.c ------------------------------------------------------- */

typedef struct {
    unsigned ways;
    uint64_t set_mask;
    uint64_t *tag;
    uint64_t *pfn;
    uint64_t *stamp;
} tlb_t;

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "lackey_tlb: out of memory\n");
        exit(1);
    }
    return p;
}

static void tlb_init(tlb_t *t, unsigned entries, unsigned ways)
{
    t->ways = ways;
    t->set_mask = entries / ways - 1;
    t->tag = xcalloc(entries, sizeof *t->tag);
    t->pfn = xcalloc(entries, sizeof *t->pfn);
    t->stamp = xcalloc(entries, sizeof *t->stamp);
}

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

HOT void tlb_fill(tlb_t *t, uint64_t key, uint64_t pfn, uint64_t now)
{
    size_t base = (size_t)(key & t->set_mask) * t->ways;
    size_t victim = base;
    uint64_t oldest = t->stamp[base];
    for (size_t i = base + 1; i < base + t->ways; i++) {
        uint64_t s = t->stamp[i];
        uint64_t take = -(uint64_t)(s < oldest);
        oldest ^= (oldest ^ s) & take;
        victim ^= (victim ^ i) & take;
    }
    t->tag[victim] = key | TAG_VALID;
    t->pfn[victim] = pfn;
    t->stamp[victim] = now;
}

HOT uint64_t fake_translate(uint64_t key)
{
    return (key ^ 0x5A5A5ULL) & 0xFFFFFFFFFULL;
}

/* One access through one mode's L1 -> L2 (run_tlb_chain of limit.c). */
HOT uint64_t chain(tlb_t *l1, tlb_t *l2, uint64_t key, uint64_t now, uint64_t *h1, uint64_t *h2)
{
    uint64_t pfn;
    if (tlb_lookup(l1, key, now, &pfn)) {
        (*h1)++;
    } else if (tlb_lookup(l2, key, now, &pfn)) {
        (*h2)++;
        tlb_fill(l1, key, pfn, now);
    } else {
        pfn = fake_translate(key);
        tlb_fill(l2, key, pfn, now);
        tlb_fill(l1, key, pfn, now);
    }
    return pfn;
}

/* -- the parse loop of lackey.c -------------------------------------------------- */

static int8_t hexval[256];

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s TRACE\n", argv[0]); return 2; }
    memset(hexval, -1, sizeof hexval);
    for (int i = 0; i < 10; i++) hexval['0' + i] = (int8_t)i;
    for (int i = 0; i < 6; i++) hexval['a' + i] = hexval['A' + i] = (int8_t)(10 + i);

    tlb_t l1[MODES], l2[MODES];
    for (int m = 0; m < MODES; m++) {
        tlb_init(&l1[m], 64, 4);
        tlb_init(&l2[m], 1536, 12);
    }
    uint64_t h1[MODES] = {0}, h2[MODES] = {0}, acc = 0;

    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    const size_t cap = (size_t)1 << 24;
    char *buf = malloc(cap);
    uint64_t records = 0, skipped = 0, checksum = 0;
    size_t carry = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        size_t got = fread(buf + carry, 1, cap - carry, f);
        size_t len = carry + got;
        if (len == 0) break;
        char *last = memrchr(buf, '\n', len);
        if (!last) break;                     /* no complete line left */
        for (char *p = buf; p <= last;) {
            char *nl = memchr(p, '\n', (size_t)(last - p) + 1);
            char *q = p;
            if (*q == '=') { skipped++; p = nl + 1; continue; }
            if (*q == ' ') q++;
            char kind = *q++;
            while (*q == ' ') q++;
            uint64_t addr = 0;
            int v;
            while ((v = hexval[(unsigned char)*q]) >= 0) { addr = addr << 4 | (uint64_t)v; q++; }
            checksum += addr ^ (uint64_t)kind;
            records++;
            uint64_t key = addr >> PAGE_SHIFT;
            for (int m = 0; m < MODES; m++)
                acc ^= chain(&l1[m], &l2[m], key, records, &h1[m], &h2[m]);
            p = nl + 1;
        }
        carry = (size_t)(buf + len - (last + 1));
        memmove(buf, last + 1, carry);
        if (got == 0) break;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    for (int m = 1; m < MODES; m++)
        if (h1[m] != h1[0] || h2[m] != h2[0]) { fprintf(stderr, "lackey_tlb: modes differ\n"); return 1; }
    printf("{\"records\": %llu, \"skipped\": %llu, \"checksum\": \"%016llx\", \"l1_hits\": %llu, "
           "\"l2_hits\": %llu, \"modes\": %d, \"sink\": \"%016llx\", \"seconds\": %.3f, \"mlines_per_s\": %.1f}\n",
           (unsigned long long)records, (unsigned long long)skipped, (unsigned long long)checksum,
           (unsigned long long)h1[0], (unsigned long long)h2[0], MODES, (unsigned long long)acc,
           s, (double)(records + skipped) / s / 1e6);
    fclose(f);
    free(buf);
    return 0;
}
