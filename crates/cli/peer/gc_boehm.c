/*
 * gc_boehm.c: the Boehm-Demers-Weiser peer of `vmprim bench gc`.
 *
 *   gc_boehm gcbench plain|incremental [stretch long_lived array_size min_depth max_depth]
 *   gc_boehm mutate  plain|incremental [table_size iterations]
 *
 * Defaults: gcbench 18 16 500000 4 16; mutate 65536 4000000.  `incremental`
 * calls GC_enable_incremental() right after GC_INIT().  Prints one JSON object
 * on stdout:
 *
 *   {"total_ms":..,"gc_ms":..,"collections":N,"check":"<u64>","pauses_us":[..]}
 *
 * total_ms is the workload's wall time (CLOCK_MONOTONIC), collections the
 * number of collections libgc completed (GC_get_gc_no), check a figure the
 * caller can recompute, pauses_us every pause and gc_ms their sum.
 * Exit status: 0 success, 1 the workload's own check failed or memory ran
 * out, 2 bad usage, 3 the pauses could not be measured as described below.
 *
 * How pauses are measured
 * -----------------------
 * The program has one thread and libgc collects in the thread that
 * allocates, so a pause is the time an allocation call spends in the
 * collector.  The collection events of GC_set_on_collection_event do not
 * bracket all of that time (libgc 8.2.2, alloc.c):
 *
 *  - plain: GC_try_to_collect_inner emits GC_EVENT_START on entry and
 *    GC_EVENT_END on exit, around the world-stopped mark (GC_stopped_mark:
 *    PRE_STOP_WORLD .. POST_START_WORLD) and the start of the sweep
 *    (GC_finish_collection: RECLAIM_START .. RECLAIM_END).  START .. END is
 *    the whole collection.
 *  - incremental: GC_maybe_gc's incremental branch emits no START or END.
 *    Before its first event (PRE_STOP_WORLD) a full collection sweeps what
 *    is left of the heap (GC_reclaim_all) and clears the mark bits.  And if
 *    a time limit is set (GC_set_time_limit, or the GC_PAUSE_TIME_TARGET
 *    environment variable), the stopped mark may be abandoned and marking
 *    continues in GC_collect_a_little_inner, called from allocation, which
 *    emits no event at all.  With Debian's libgc, built with parallel
 *    marking, the time limit defaults to GC_TIME_UNLIMITED, so incremental
 *    mode is in fact generational: every collection is one stopped mark,
 *    partial or full.
 *
 * So in plain mode a pause is GC_EVENT_START .. GC_EVENT_END.  In
 * incremental mode the peer times the allocator's slow path itself, with
 * clock_gettime(CLOCK_MONOTONIC).  libgc's thread-local allocator
 * (GC_malloc_kind) refills its free lists by calling the public
 * GC_generic_malloc_many (gc_inline.h) through the PLT; this program
 * defines that function, so the dynamic linker binds libgc's calls to it,
 * and it calls libgc's own through dlsym(RTLD_NEXT).  Every collection,
 * stopped mark and mark increment triggered by a small allocation runs
 * inside that call (GC_collect_a_little_inner(1) at its start).  A refill
 * is one pause when the collector worked in it: a collection event fired
 * during it, or a mark phase was under way when it began (then it began
 * with a mark increment).  The two large allocations (the GCBench array,
 * the mutate table) are timed the same way.  Events outside a timed call
 * (libgc serves the first allocations of each size from
 * GC_malloc_kind_global, not from a refill) fall back to the event
 * bracket: PRE_STOP_WORLD .. RECLAIM_END, or .. POST_START_WORLD when the
 * stopped mark is abandoned.  (In plain mode every event takes that
 * fallback path, where START .. END wins.)
 *
 * An incremental pause thus includes the refill's own work (sweeping or
 * carving one block: microseconds); refills in which the collector did not
 * run are allocation, not pause, as lazy sweeping is in plain mode.  The
 * clock is read twice per refill, about once every 80 allocations of a
 * node, which costs about 3% of total_ms (measured by timing refills in
 * plain mode too); plain mode pays nothing.  The peer checks that the
 * interposition took effect and exits with status 3 if not (a static
 * libgc, or one that binds the call directly).
 *
 * Pauses go to a buffer allocated before GC_INIT (with malloc, so the
 * collector neither scans it nor is entered while recording).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gc.h>
#include <gc/gc_inline.h>

/* ---- pause recording ---------------------------------------------------- */

#define PAUSE_CAPACITY ((size_t)1 << 21)

static uint64_t *pause_ns;  /* PAUSE_CAPACITY entries, from malloc */
static size_t n_pauses;
static int pauses_overflowed;

static int time_alloc_calls; /* incremental mode: time refills and large allocations */
static int marking;          /* MARK_START seen, its MARK_END not yet */
static int in_timed_call;    /* inside a timed allocation call */
static int collector_worked; /* the collector ran in the current timed call */

static int bracket_open;     /* an event bracket is open (outside timed calls) */
static int bracket_by_start; /* ... and was opened by GC_EVENT_START */
static uint64_t bracket_t0;

static uint64_t now_ns(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void record_pause(uint64_t ns)
{
    if (n_pauses == PAUSE_CAPACITY) {
        pauses_overflowed = 1;
        return;
    }
    pause_ns[n_pauses++] = ns;
}

/* Pauses from the events alone: every pause in plain mode, those outside a
 * timed call in incremental mode (see the top of the file). */
static void bracket_event(GC_EventType e)
{
    switch (e) {
    case GC_EVENT_START:
    case GC_EVENT_PRE_STOP_WORLD:
        if (!bracket_open) {
            bracket_open = 1;
            bracket_by_start = e == GC_EVENT_START;
            bracket_t0 = now_ns();
        }
        return;
    case GC_EVENT_END:
        break;
    case GC_EVENT_RECLAIM_END:
        if (bracket_by_start)
            return; /* GC_EVENT_END follows */
        break;
    case GC_EVENT_POST_START_WORLD:
        if (!marking)
            return; /* the mark finished: the sweep follows */
        break;      /* the stopped mark was abandoned */
    default:
        return;
    }
    if (bracket_open) {
        bracket_open = 0;
        record_pause(now_ns() - bracket_t0);
    }
}

/* Called by libgc with its lock held, in this (the only) thread. */
static void GC_CALLBACK on_collection_event(GC_EventType e)
{
    if (e == GC_EVENT_MARK_START)
        marking = 1;
    else if (e == GC_EVENT_MARK_END)
        marking = 0;
    if (in_timed_call)
        collector_worked = 1;
    else
        bracket_event(e);
}

/* Returns the start time, or 0 when allocation calls are not timed. */
static uint64_t timed_call_begin(void)
{
    in_timed_call = time_alloc_calls;
    if (!in_timed_call)
        return 0;
    collector_worked = marking; /* a mark phase under way: an increment runs */
    return now_ns();
}

static void timed_call_end(uint64_t t0)
{
    if (!in_timed_call)
        return;
    in_timed_call = 0;
    if (collector_worked)
        record_pause(now_ns() - t0);
}

/* ---- the interposed refill ---------------------------------------------- */

typedef void(GC_CALL *malloc_many_fn)(size_t, int, void **);

static malloc_many_fn libgc_malloc_many;
static uint64_t n_refills;

void GC_CALL GC_generic_malloc_many(size_t lb, int k, void **result)
{
    uint64_t t0 = timed_call_begin();

    libgc_malloc_many(lb, k, result);
    timed_call_end(t0);
    n_refills++;
}

static void find_libgc_malloc_many(void)
{
    /* POSIX guarantees that dlsym's result converts to a function pointer. */
    libgc_malloc_many = (malloc_many_fn)dlsym(RTLD_NEXT, "GC_generic_malloc_many");
    if (libgc_malloc_many == NULL) {
        fprintf(stderr, "gc_boehm: libgc's GC_generic_malloc_many not found: %s\n", dlerror());
        exit(3);
    }
}

/* ---- allocation --------------------------------------------------------- */

typedef struct Node {
    struct Node *left, *right;
    int64_t i, j;
} Node;

enum contents { POINTERS, POINTER_FREE };

static uint64_t n_nodes; /* allocated, to check that refills were timed */

static void out_of_memory(size_t bytes)
{
    fprintf(stderr, "gc_boehm: out of memory allocating %zu bytes\n", bytes);
    exit(1);
}

/* GC_MALLOC clears the object: i = j = 0. */
static Node *new_node(Node *left, Node *right)
{
    Node *n = GC_MALLOC(sizeof *n);

    if (n == NULL)
        out_of_memory(sizeof *n);
    n->left = left;
    n->right = right;
    n_nodes++;
    return n;
}

/* A large allocation does not go through a refill: time it here. */
static void *timed_malloc(size_t bytes, enum contents c)
{
    uint64_t t0 = timed_call_begin();
    void *p = c == POINTERS ? GC_MALLOC(bytes) : GC_MALLOC_ATOMIC(bytes);

    timed_call_end(t0);
    if (p == NULL)
        out_of_memory(bytes);
    return p;
}

/* ---- GCBench (Ellis, Kovac, Boehm) -------------------------------------- */

struct gcbench {
    unsigned stretch, long_lived, min_depth, max_depth;
    size_t array_size;
};

static double *volatile gcbench_array; /* escapes, so its stores stay */

static uint64_t tree_size(unsigned depth)
{
    return ((uint64_t)1 << (depth + 1)) - 1;
}

static uint64_t num_iters(unsigned depth, unsigned stretch)
{
    return 2 * tree_size(stretch) / tree_size(depth);
}

/* Grows `node` top-down into a full tree of `depth` levels below it. */
static void populate(unsigned depth, Node *node)
{
    if (depth == 0)
        return;
    depth--;
    node->left = new_node(NULL, NULL);
    node->right = new_node(NULL, NULL);
    populate(depth, node->left);
    populate(depth, node->right);
}

/* Builds a full tree of `depth` levels bottom-up. */
static Node *make_tree(unsigned depth)
{
    Node *left, *right;

    if (depth == 0)
        return new_node(NULL, NULL);
    left = make_tree(depth - 1);
    right = make_tree(depth - 1);
    return new_node(left, right);
}

static uint64_t count_nodes(const Node *n)
{
    return n == NULL ? 0 : 1 + count_nodes(n->left) + count_nodes(n->right);
}

static void gcbench_temporaries(const struct gcbench *p)
{
    for (unsigned d = p->min_depth; d <= p->max_depth; d += 2) {
        uint64_t iters = num_iters(d, p->stretch);

        for (uint64_t i = 0; i < iters; i++)
            populate(d, new_node(NULL, NULL));
        for (uint64_t i = 0; i < iters; i++)
            (void)make_tree(d);
    }
}

/* Runs GCBench; returns the long-lived tree, after checking it and the array. */
static Node *gcbench_run(const struct gcbench *p)
{
    Node *long_lived;
    double *array;

    (void)make_tree(p->stretch);
    long_lived = new_node(NULL, NULL);
    populate(p->long_lived, long_lived);
    array = timed_malloc(p->array_size * sizeof *array, POINTER_FREE);
    gcbench_array = array;
    for (size_t i = 0; i < p->array_size / 2; i++)
        array[i] = 1.0 / (double)i; /* i = 0 gives inf, as in the original */
    gcbench_temporaries(p);
    if (long_lived == NULL || array[1000] != 1.0 / 1000) {
        fprintf(stderr, "gc_boehm: gcbench: the long-lived data did not survive\n");
        exit(1);
    }
    return long_lived;
}

/* ---- mutate ------------------------------------------------------------- */

struct mutate {
    size_t table_size;
    uint64_t iterations;
};

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

/* xorshift64* */
static uint64_t next_random(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Du;
}

static void mutate_step(Node **table, size_t table_size, uint64_t it)
{
    uint64_t r = next_random();
    size_t k = (size_t)((r >> 16) % table_size);
    Node *y = new_node(NULL, NULL);
    Node *c = table[k];

    y->i = (int64_t)it;
    if ((r & 1) == 0)
        c->left = y;
    else
        c->right = y;
    if (((r >> 8) & 63) == 0) {
        Node *n = new_node(c->left, NULL);

        n->i = (int64_t)it;
        table[k] = n;
    }
}

static Node **mutate_run(const struct mutate *p)
{
    Node **table = timed_malloc(p->table_size * sizeof *table, POINTERS);

    for (size_t k = 0; k < p->table_size; k++) {
        table[k] = new_node(NULL, NULL);
        table[k]->i = (int64_t)k;
    }
    for (uint64_t it = 0; it < p->iterations; it++)
        mutate_step(table, p->table_size, it);
    return table;
}

static uint64_t mutate_check(Node *const *table, size_t table_size)
{
    uint64_t sum = 0;

    for (size_t k = 0; k < table_size; k++) {
        const Node *c = table[k];

        sum += (uint64_t)c->i;
        sum += c->left ? (uint64_t)c->left->i : 0;
        sum += c->right ? (uint64_t)c->right->i : 0;
    }
    return sum;
}

/* ---- command line ------------------------------------------------------- */

enum workload { GCBENCH, MUTATE };

struct args {
    enum workload workload;
    int incremental;
    struct gcbench gcbench;
    struct mutate mutate;
};

static const char usage[] =
    "usage: gc_boehm gcbench plain|incremental [stretch long_lived array_size min_depth max_depth]\n"
    "       gc_boehm mutate  plain|incremental [table_size iterations]\n";

static void bad_usage(const char *why, const char *what)
{
    fprintf(stderr, "gc_boehm: %s%s\n%s", why, what, usage);
    exit(2);
}

/* A decimal in [min, max]. */
static uint64_t parse_u64(const char *s, uint64_t min, uint64_t max)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno != 0 || v < min || v > max)
        bad_usage("bad number or out of range: ", s);
    return v;
}

static void parse_gcbench(int n, char **v, struct gcbench *p)
{
    *p = (struct gcbench){ 18, 16, 4, 16, 500000 };
    if (n == 0)
        return;
    if (n != 5)
        bad_usage("gcbench takes 0 or 5 parameters", "");
    p->stretch = (unsigned)parse_u64(v[0], 0, 30);
    p->long_lived = (unsigned)parse_u64(v[1], 0, 30);
    p->array_size = (size_t)parse_u64(v[2], 2002, (uint64_t)1 << 32); /* array[1000] is set */
    p->min_depth = (unsigned)parse_u64(v[3], 0, 30);
    p->max_depth = (unsigned)parse_u64(v[4], p->min_depth, 30);
}

static void parse_mutate(int n, char **v, struct mutate *p)
{
    *p = (struct mutate){ 65536, 4000000 };
    if (n == 0)
        return;
    if (n != 2)
        bad_usage("mutate takes 0 or 2 parameters", "");
    p->table_size = (size_t)parse_u64(v[0], 1, (uint64_t)1 << 32);
    p->iterations = parse_u64(v[1], 0, UINT64_MAX);
}

static void parse_args(int argc, char **argv, struct args *a)
{
    if (argc < 3)
        bad_usage("missing workload or mode", "");
    if (strcmp(argv[2], "plain") == 0)
        a->incremental = 0;
    else if (strcmp(argv[2], "incremental") == 0)
        a->incremental = 1;
    else
        bad_usage("unknown mode: ", argv[2]);
    if (strcmp(argv[1], "gcbench") == 0) {
        a->workload = GCBENCH;
        parse_gcbench(argc - 3, argv + 3, &a->gcbench);
    } else if (strcmp(argv[1], "mutate") == 0) {
        a->workload = MUTATE;
        parse_mutate(argc - 3, argv + 3, &a->mutate);
    } else {
        bad_usage("unknown workload: ", argv[1]);
    }
}

/* ---- main --------------------------------------------------------------- */

struct outcome {
    uint64_t elapsed_ns;
    uint64_t check;
};

/* Times the workload alone; the check is computed after the clock stops. */
static struct outcome run(const struct args *a)
{
    struct outcome o;
    uint64_t t0 = now_ns();

    if (a->workload == GCBENCH) {
        Node *long_lived = gcbench_run(&a->gcbench);

        o.elapsed_ns = now_ns() - t0;
        o.check = count_nodes(long_lived);
    } else {
        Node **table = mutate_run(&a->mutate);

        o.elapsed_ns = now_ns() - t0;
        o.check = mutate_check(table, a->mutate.table_size);
    }
    return o;
}

/* Exits with status 3 if some pause may have gone unmeasured. */
static void check_measurement(void)
{
    if (pauses_overflowed) {
        fprintf(stderr, "gc_boehm: more than %zu pauses\n", PAUSE_CAPACITY);
        exit(3);
    }
    if (n_nodes > 100000 && n_refills == 0) {
        fprintf(stderr, "gc_boehm: GC_generic_malloc_many was not interposed "
                        "(static libgc?): pauses inside allocation were not timed\n");
        exit(3);
    }
}

static void print_json(const struct outcome *o, uint64_t collections)
{
    uint64_t gc_ns = 0;

    for (size_t i = 0; i < n_pauses; i++)
        gc_ns += pause_ns[i];
    printf("{\"total_ms\":%.3f,\"gc_ms\":%.6f,\"collections\":%" PRIu64
           ",\"check\":\"%" PRIu64 "\",\"pauses_us\":[",
           (double)o->elapsed_ns / 1e6, (double)gc_ns / 1e6, collections, o->check);
    for (size_t i = 0; i < n_pauses; i++)
        printf("%s%.3f", i == 0 ? "" : ",", (double)pause_ns[i] / 1e3);
    printf("]}\n");
}

int main(int argc, char **argv)
{
    struct args a = { 0 };
    struct outcome o;
    GC_word gc_no;

    parse_args(argc, argv, &a);
    pause_ns = malloc(PAUSE_CAPACITY * sizeof *pause_ns);
    if (pause_ns == NULL)
        out_of_memory(PAUSE_CAPACITY * sizeof *pause_ns);
    find_libgc_malloc_many();
    GC_INIT();
    if (a.incremental) {
        GC_enable_incremental();
        time_alloc_calls = 1;
    }
    GC_set_on_collection_event(on_collection_event);
    gc_no = GC_get_gc_no();
    o = run(&a);
    check_measurement();
    print_json(&o, (uint64_t)(GC_get_gc_no() - gc_no));
    return 0;
}
