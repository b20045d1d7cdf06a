#define _GNU_SOURCE
/*
 * hold: open or accept many idle TCP connections and keep them open, for the
 * idle-memory scenario of bench/run.py (which compiles this with gcc).
 *
 *   hold serve PORT COUNTFILE   accept on 127.0.0.1:PORT forever, never read;
 *                               COUNTFILE holds the number accepted so far
 *   hold connect PORT           for each number N read from stdin, open N more
 *                               connections to 127.0.0.1:PORT and print
 *                               "connected OK FAILED" (totals); hold them all
 *                               until stdin is closed
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static void raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void write_count(const char *path, long count) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "%ld\n", count);
    fclose(f);
    rename(tmp, path);
}

static int serve(int port, const char *countfile) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(port);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) {
        perror("hold serve");
        return 1;
    }
    long count = 0, written = -1;
    write_count(countfile, 0);
    for (;;) {
        struct pollfd p = {s, POLLIN, 0};
        poll(&p, 1, 100);
        for (;;) {
            int c = accept4(s, NULL, NULL, SOCK_NONBLOCK);
            if (c < 0) break;
            count++;
        }
        if (count != written) {
            write_count(countfile, count);
            written = count;
        }
    }
}

/* Open n connections (at most 256 in flight); add the established to *ok. */
static long open_batch(int port, long n, long *ok) {
    int ep = epoll_create1(0);
    struct sockaddr_in a = loopback(port);
    long started = 0, done = 0, failed = 0, inflight = 0;
    struct epoll_event ev, events[256];
    while (done < n) {
        while (started < n && inflight < 256) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            started++;
            if (s < 0) {
                failed++, done++;
                continue;
            }
            if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
                (*ok)++, done++;
                continue;
            }
            if (errno != EINPROGRESS) {
                failed++, done++;
                close(s);
                continue;
            }
            ev.events = EPOLLOUT;
            ev.data.fd = s;
            epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
            inflight++;
        }
        if (inflight == 0) continue;
        int k = epoll_wait(ep, events, 256, 5000);
        if (k <= 0) break;
        for (int i = 0; i < k; i++) {
            int s = events[i].data.fd, err = 0;
            socklen_t len = sizeof err;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL);
            inflight--, done++;
            if (err) {
                failed++;
                close(s);
            } else {
                (*ok)++;
            }
        }
    }
    close(ep);
    return failed + (n - done);
}

/* Each line on stdin is a number of connections to open more; after each,
 * print "connected TOTAL_OK TOTAL_FAILED". EOF closes them all. */
static int connect_many(int port) {
    long ok = 0, failed = 0, n;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        n = atol(line);
        failed += open_batch(port, n, &ok);
        printf("connected %ld %ld\n", ok, failed);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    raise_nofile();
    if (argc == 4 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]), argv[3]);
    if (argc == 3 && strcmp(argv[1], "connect") == 0) return connect_many(atoi(argv[2]));
    fprintf(stderr, "usage: hold serve PORT COUNTFILE | hold connect PORT\n");
    return 2;
}
