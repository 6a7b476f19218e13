/* The floor a file system sets under receiving many small files durably, without meshsync:
 * per file, create a hidden temp file, write it, fsync it, rename it to its final name and
 * fsync the directory (the sequence meshsync follows, see src/folder/write/mod.rs), from
 * THREADS threads, files spread over DIRS directories as bench-scale.sh spreads them.
 *
 *   fs_floor ROOT FILES THREADS DIRS MODE [SIZE]
 *   MODE 2: fsync the file and the directory; 1: only the file; 0: no fsync at all;
 *   MODE 3: in batches of BATCH files per thread: write every temp file, one syncfs, rename
 *   them all, one more syncfs (as durable as MODE 2 once the second syncfs returns);
 *   MODE 4: as MODE 3 with unnamed temp files (O_TMPFILE), named by linkat instead of rename.
 *
 * Prints wall time, files per second and CPU (user + system) per file, the same measure as
 * bench-scale.sh's B_cpu_ms_per_file. Built and run by scripts/bench-fs-floor.sh. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static int files, threads, dirs, mode;
static size_t size;
static const char *root;
static atomic_int next_file;
static char *content;

static void check(int ok, const char *what, const char *path) {
    if (!ok) {
        perror(what);
        fprintf(stderr, "  on %s\n", path);
        exit(1);
    }
}

#define BATCH 256

static void name_file(int i, char *dir, char *temp, char *target) {
    snprintf(dir, 4096, "%s/d%d", root, i % dirs);
    snprintf(temp, 4096, "%s/.tmp%d", dir, i);
    snprintf(target, 4096, "%s/f%d", dir, i);
}

/* Writes one file of a batch in its temp file and returns the descriptor kept open until it is
 * named (-1 once closed): MODE 3 by its temp name, MODE 4 unnamed (O_TMPFILE in its
 * directory). */
static int write_temp(const char *dir, const char *temp) {
    if (mode == 4) {
        int fd = open(dir, O_TMPFILE | O_WRONLY, 0600);
        if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR)) {
            fprintf(stderr, "no unnamed files (O_TMPFILE) on %s\n", root);
            exit(3);
        }
        check(fd >= 0, "open O_TMPFILE", dir);
        check(write(fd, content, size) == (ssize_t)size, "write", dir);
        return fd;
    }
    int fd = open(temp, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    check(fd >= 0, "open", temp);
    check(write(fd, content, size) == (ssize_t)size, "write", temp);
    check(close(fd) == 0, "close", temp);
    return -1;
}

/* Gives a written temp file its name: a rename, or for an unnamed one (`fd`) a linkat, which
 * never replaces a file already there. */
static void name_temp(const char *temp, const char *target, int fd) {
    if (fd < 0) {
        check(rename(temp, target) == 0, "rename", target);
        return;
    }
    char fd_path[64];
    snprintf(fd_path, sizeof fd_path, "/proc/self/fd/%d", fd);
    check(linkat(AT_FDCWD, fd_path, AT_FDCWD, target, AT_SYMLINK_FOLLOW) == 0, "linkat", target);
    close(fd);
}

static void *batch_writer(void *unused) {
    (void)unused;
    char dir[4096], temp[4096], target[4096];
    int fds[BATCH];
    int rootfd = open(root, O_RDONLY | O_DIRECTORY);
    check(rootfd >= 0, "open", root);
    for (;;) {
        int first = atomic_fetch_add(&next_file, BATCH);
        if (first >= files) {
            close(rootfd);
            return NULL;
        }
        int last = first + BATCH < files ? first + BATCH : files;
        for (int i = first; i < last; i++) {
            name_file(i, dir, temp, target);
            fds[i - first] = write_temp(dir, temp);
        }
        check(syncfs(rootfd) == 0, "syncfs", root);
        for (int i = first; i < last; i++) {
            name_file(i, dir, temp, target);
            name_temp(temp, target, fds[i - first]);
        }
        check(syncfs(rootfd) == 0, "syncfs", root);
    }
}

static void *writer(void *unused) {
    (void)unused;
    char dir[4096], temp[4096], target[4096];
    if (mode >= 3) {
        return batch_writer(unused);
    }
    for (;;) {
        int i = atomic_fetch_add(&next_file, 1);
        if (i >= files) {
            return NULL;
        }
        snprintf(dir, sizeof dir, "%s/d%d", root, i % dirs);
        snprintf(temp, sizeof temp, "%s/.tmp%d", dir, i);
        snprintf(target, sizeof target, "%s/f%d", dir, i);
        int fd = open(temp, O_CREAT | O_WRONLY | O_TRUNC, 0600);
        check(fd >= 0, "open", temp);
        check(write(fd, content, size) == (ssize_t)size, "write", temp);
        if (mode >= 1) {
            check(fsync(fd) == 0, "fsync", temp);
        }
        check(close(fd) == 0, "close", temp);
        check(rename(temp, target) == 0, "rename", target);
        if (mode >= 2) {
            int dfd = open(dir, O_RDONLY | O_DIRECTORY);
            check(dfd >= 0, "open", dir);
            check(fsync(dfd) == 0, "fsync", dir);
            close(dfd);
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s ROOT FILES THREADS DIRS MODE [SIZE]\n", argv[0]);
        return 2;
    }
    root = argv[1];
    files = atoi(argv[2]);
    threads = atoi(argv[3]);
    dirs = atoi(argv[4]);
    mode = atoi(argv[5]);
    size = argc > 6 ? (size_t)atol(argv[6]) : 1024;
    if (files < 1 || threads < 1 || threads > 4096 || dirs < 1 || mode < 0 || mode > 4) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    content = malloc(size);
    check(content != NULL, "malloc", root);
    memset(content, 'x', size);
    char path[4096];
    for (int d = 0; d < dirs; d++) {
        snprintf(path, sizeof path, "%s/d%d", root, d);
        check(mkdir(path, 0755) == 0, "mkdir", path);
    }
    sync();
    struct timeval t0, t1;
    gettimeofday(&t0, NULL);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    for (int t = 0; t < threads; t++) {
        check(pthread_create(&ids[t], NULL, writer, NULL) == 0, "pthread_create", root);
    }
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
    }
    gettimeofday(&t1, NULL);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_usec - t0.tv_usec) / 1e6;
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    printf("%d\t%d\t%d\t%.2f\t%.0f\t%.3f\n", mode, threads, dirs, wall, files / wall,
           cpu * 1000 / files);
    return 0;
}
