/*
 * vm_kernel.c: the kernel's own page faults and fork, the peer of
 * `vmprim bench vm`, which compiles it with `cc -O2` and runs it once per
 * figure and round, alternating with vmprim's measurement of the same
 * thing.
 *
 *   vm_kernel file PATH PAGES   first read of each page of a MAP_PRIVATE,
 *                               PROT_READ mapping of the file at PATH (warm
 *                               in the page cache: the caller read it once).
 *                               Page i's first 8 bytes must hold i ^ FILE_TAG,
 *                               little-endian; every page is checked.
 *   vm_kernel cow PAGES         PAGES pages of anonymous memory, each written,
 *                               then fork(); the child waits on a pipe, and
 *                               the parent times its first write to each page
 *                               (each copies the page: the child still maps
 *                               it).
 *   vm_kernel fork PAGES        PAGES pages of anonymous memory, each written,
 *                               then one fork() timed in the parent; the child
 *                               calls _exit(0) at once and the parent waits
 *                               for it after the clock stopped.
 *
 * Prints one JSON object on stdout:
 *
 *   {"value": V, "faults": F, "pages": N}
 *
 * V is nanoseconds per page for `file` and `cow`, milliseconds for `fork`;
 * F the minor faults the timed part took (getrusage), so the caller can
 * see how many pages one kernel fault served (the kernel maps up to 16
 * page-cache pages per file read fault: fault-around); N the page count.
 * Anonymous memory is madvise(MADV_NOHUGEPAGE): vmprim's frames are 4 KiB
 * pages, and the comparison is page against page.  Times are
 * CLOCK_MONOTONIC.  Exit status: 0 success, 1 a system call failed or a
 * page read back wrong, 2 bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Must match FILE_TAG in crates/cli/src/bench/vm.rs. */
#define FILE_TAG 0x766d7072696d4631ULL

static long pg;

static void die(const char *what) {
    fprintf(stderr, "vm_kernel: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static long minflt(void) {
    struct rusage u;
    if (getrusage(RUSAGE_SELF, &u)) die("getrusage");
    return u.ru_minflt;
}

static void report(double value, long faults, long pages) {
    printf("{\"value\": %.3f, \"faults\": %ld, \"pages\": %ld}\n", value, faults, pages);
}

/* PAGES pages of private anonymous memory in 4 KiB pages, every page written. */
static char *resident(long pages) {
    char *m = mmap(0, pages * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("mmap anonymous");
    if (madvise(m, pages * pg, MADV_NOHUGEPAGE)) die("madvise MADV_NOHUGEPAGE");
    for (long i = 0; i < pages; i++) m[i * pg] = 1;
    return m;
}

static int file_fault(const char *path, long pages) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    const char *m = mmap(0, pages * pg, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) die("mmap file");
    long f0 = minflt();
    double t0 = now_ns();
    uint64_t bad = 0;
    for (long i = 0; i < pages; i++) {
        uint64_t v = *(const volatile uint64_t *)(m + i * pg);
        bad |= v ^ ((uint64_t)i ^ FILE_TAG);
    }
    double dt = now_ns() - t0;
    long faults = minflt() - f0;
    if (bad) {
        for (long i = 0; i < pages; i++) {
            uint64_t v = *(const uint64_t *)(m + i * pg);
            if (v != ((uint64_t)i ^ FILE_TAG)) {
                fprintf(stderr, "vm_kernel: page %ld of %s reads %#llx, not %#llx\n", i, path,
                        (unsigned long long)v, (unsigned long long)((uint64_t)i ^ FILE_TAG));
                break;
            }
        }
        return 1;
    }
    munmap((void *)m, pages * pg);
    close(fd);
    report(dt / pages, faults, pages);
    return 0;
}

static int cow_fault(long pages) {
    char *m = resident(pages);
    int p[2];
    if (pipe(p)) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        /* The child keeps every page mapped until the parent is done. */
        char c;
        close(p[1]);
        while (read(p[0], &c, 1) < 0 && errno == EINTR) {}
        _exit(0);
    }
    close(p[0]);
    long f0 = minflt();
    double t0 = now_ns();
    for (long i = 0; i < pages; i++) m[i * pg] = 2;
    double dt = now_ns() - t0;
    long faults = minflt() - f0;
    close(p[1]);
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "vm_kernel: the child failed (status %d)\n", status);
        return 1;
    }
    munmap(m, pages * pg);
    report(dt / pages, faults, pages);
    return 0;
}

static int fork_time(long pages) {
    char *m = resident(pages);
    long f0 = minflt();
    double t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    double dt = now_ns() - t0;
    long faults = minflt() - f0;
    if (pid < 0) die("fork");
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "vm_kernel: the child failed (status %d)\n", status);
        return 1;
    }
    munmap(m, pages * pg);
    report(dt / 1e6, faults, pages);
    return 0;
}

static long count(const char *s) {
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno || *end || n <= 0) {
        fprintf(stderr, "vm_kernel: bad page count %s\n", s);
        exit(2);
    }
    return n;
}

int main(int argc, char **argv) {
    pg = sysconf(_SC_PAGESIZE);
    if (argc == 4 && !strcmp(argv[1], "file")) return file_fault(argv[2], count(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "cow")) return cow_fault(count(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "fork")) return fork_time(count(argv[2]));
    fprintf(stderr, "usage: vm_kernel file PATH PAGES | cow PAGES | fork PAGES\n");
    return 2;
}
