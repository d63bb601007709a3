/* A very slow disk under one folder, for the fault matrix: every write,
   pwrite, fsync and fdatasync to a file under SLOW_DISK_DIR waits first
   (SLOW_WRITE_MS, default 20 ms; SLOW_FSYNC_MS, default 300 ms) and is
   logged to SLOW_DISK_LOG as "pid tid seconds call", so a test can see
   which thread paid. Other files (the worker's log, sockets) are untouched.
   Built by the test with gcc and loaded with LD_PRELOAD. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static int slow(int fd) {
    const char *dir = getenv("SLOW_DISK_DIR");
    char link[64], target[4096];
    if (!dir || !*dir) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strncmp(target, dir, strlen(dir)) == 0;
}

static void pay(const char *call, const char *variable, long fallback) {
    const char *ms = getenv(variable);
    long wait = ms ? atol(ms) : fallback;
    struct timespec t = {wait / 1000, (wait % 1000) * 1000000L};
    nanosleep(&t, NULL);
    const char *log = getenv("SLOW_DISK_LOG");
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            fprintf(f, "%d %ld %ld.%09ld %s\n", getpid(), (long)syscall(SYS_gettid), (long)now.tv_sec, now.tv_nsec,
                    call);
            fclose(f);
        }
    }
}

typedef int (*sync_fn)(int);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);

int fsync(int fd) {
    static sync_fn real = NULL;
    if (!real) real = (sync_fn)dlsym(RTLD_NEXT, "fsync");
    if (slow(fd)) pay("fsync", "SLOW_FSYNC_MS", 300);
    return real(fd);
}

int fdatasync(int fd) {
    static sync_fn real = NULL;
    if (!real) real = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    if (slow(fd)) pay("fdatasync", "SLOW_FSYNC_MS", 300);
    return real(fd);
}

ssize_t write(int fd, const void *buf, size_t count) {
    static write_fn real = NULL;
    if (!real) real = (write_fn)dlsym(RTLD_NEXT, "write");
    if (slow(fd)) pay("write", "SLOW_WRITE_MS", 20);
    return real(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    static pwrite_fn real = NULL;
    if (!real) real = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    if (slow(fd)) pay("pwrite", "SLOW_WRITE_MS", 20);
    return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    static pwrite_fn real = NULL;
    if (!real) real = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    if (slow(fd)) pay("pwrite64", "SLOW_WRITE_MS", 20);
    return real(fd, buf, count, offset);
}
