/* clockshift: shift one process's wall clock (CLOCK_REALTIME) by an offset that can
 * change while it runs; its monotonic clocks are left alone, as a real clock step
 * (an NTP step, a hypervisor resuming) leaves them.
 *
 * The chaos suite (tests/chaos/faults.py, clock_jump) preloads it into one test-bed
 * host's shoald: LD_PRELOAD=clockshift.so SHOAL_CLOCK_OFFSET_FILE=<file>, the file
 * holding the offset in seconds ("0", "-90", "120.5"). The file is read again at most
 * every 200 ms of real monotonic time. libfaketime was tried first: with its monotonic
 * clocks left real, Python's time.sleep fails with EINVAL there.
 *
 * Built by deploy/testbed/hostfaults.py with the machine's gcc; not shipped.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long offset_ns;        /* read and written with __atomic builtins */
static long long next_check_ns;

static long long now_ns(clockid_t clock) {
    struct timespec ts;
    if (real_clock_gettime(clock, &ts) != 0)
        return 0;
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void init(void) {
    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
}

static long long offset(void) {
    init();
    long long mono = now_ns(CLOCK_MONOTONIC);
    if (mono >= __atomic_load_n(&next_check_ns, __ATOMIC_RELAXED)) {
        __atomic_store_n(&next_check_ns, mono + 200000000LL, __ATOMIC_RELAXED);
        const char *path = getenv("SHOAL_CLOCK_OFFSET_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        if (f) {
            double seconds = 0;
            if (fscanf(f, "%lf", &seconds) == 1)
                __atomic_store_n(&offset_ns, (long long)(seconds * 1e9), __ATOMIC_RELAXED);
            fclose(f);
        }
    }
    return __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
}

static void shift(struct timespec *ts) {
    long long t = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset();
    ts->tv_sec = t / 1000000000LL;
    ts->tv_nsec = t % 1000000000LL;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    init();
    int rc = real_clock_gettime(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE))
        shift(ts);
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
