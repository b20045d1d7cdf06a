#define _GNU_SOURCE
/*
 * flood: open TCP connections from random sources in 127.1.0.0/16 as fast as
 * a bounded number in flight allows, and close each one the moment its
 * handshake completes (or fails); or, with -u, send UDP datagrams from them.
 * For bench/flood.py, which compiles this with gcc; tests may use it through
 * bench.flood as well.
 *
 *   flood [-s SOURCE] [-u] [-b BYTES] HOST PORT SECONDS INFLIGHT [CPU [RATE [TIMEOUT_MS]]]
 *
 * -s SOURCE: the sources, an IPv4 network (random addresses in it; in a
 * network of 256 addresses or more, none ending in .0 or .255) or one address
 * (A.B.C.D or A.B.C.D/32); default 127.1.0.0/16. Any 127.x address is local
 * on loopback, so it can be bound without IP_FREEBIND.
 *
 * -u: UDP. INFLIGHT sockets, each bound to a random source, send BYTES-byte
 * datagrams (-b, default 64) in turn, as fast as they can or at most RATE a
 * second; anything sent back to them is read and counted as "completed" (a
 * filtered source gets nothing back). "attempts" counts the datagrams sent,
 * "failed" the sends refused (a full socket buffer).
 *
 * Each connection is a non-blocking socket bound to a source, port 0 (with
 * IP_BIND_ADDRESS_NO_PORT, so the port is chosen at connect() from the whole
 * 4-tuple rather than reserved per address at bind()), watched by epoll for
 * completion, and closed with SO_LINGER 0 (a reset: no TIME_WAIT here). A
 * connection not done after TIMEOUT_MS (default 250; its SYN dropped by a
 * full accept queue) is abandoned for a fresh one and counted as a timeout. With CPU (>= 0), the
 * process pins itself to that CPU. With RATE (> 0), it starts at most RATE
 * connections a second (and still at most INFLIGHT at a time): the same
 * offered flood whatever the server does; without, as many as the bound in
 * flight allows, so a server that accepts slowly also slows the flood.
 *
 * At the end, one line of JSON on stdout:
 *   {"completed": N, "reset": N, "attempts": N, "failed": N, "timeouts": N,
 *    "unfinished": N, "addr_retries": N, "seconds": S, "inflight": N}
 * completed: handshakes that completed (connect() succeeded, including those
 * the server had already reset when we looked); reset: those of them found
 * reset (ECONNRESET); attempts: connect() calls that were started; failed:
 * connects that ended in another error (refused...); timeouts: abandoned
 * after the timeout; unfinished: still in flight at the end; addr_retries: sources
 * that were busy (EADDRNOTAVAIL, EADDRINUSE) and replaced by another.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Below the kernel's first SYN retransmission (1 s): a connect whose SYN
 * was dropped makes way for a fresh one rather than waiting for it. */
#define DEFAULT_TIMEOUT_MS 250
#define MAX_INFLIGHT 65536
#define SOURCE_TRIES 16

struct slot {
    int fd;           /* -1 when free */
    double started;   /* monotonic seconds */
};

static volatile sig_atomic_t stopping = 0;

static struct {
    long completed, reset, attempts, failed, timeouts, unfinished, addr_retries;
} counts;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t rng_state;

/* The sources: a network (host order) and its mask. */
static uint32_t source_net = (127u << 24) | (1u << 16), source_mask = 0xffff0000u;

static uint32_t rng(void) {
    /* xorshift64*: plenty for picking source addresses */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static void raise_nofile(long want) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && (long)r.rlim_cur < want) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

/* A random source address (host order) in the network given by -s. */
static uint32_t pick_source(void) {
    uint32_t hosts = ~source_mask;
    if (hosts == 0) return source_net;
    uint32_t r = rng();
    if (hosts < 255) return source_net | (r & hosts);
    /* X.Y.Z.W with W in 1..254: no network or broadcast look-alikes */
    return source_net | (r & hosts & ~0xffu) | (1 + rng() % 254);
}

static int parse_source(const char *text) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", text);
    int bits = 32;
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = 0;
        bits = atoi(slash + 1);
        if (bits < 1 || bits > 32) return -1;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1) return -1;
    source_mask = bits == 32 ? 0xffffffffu : ~((1u << (32 - bits)) - 1);
    source_net = ntohl(a.s_addr) & source_mask;
    return 0;
}

/* Close with a reset, so that neither side keeps a TIME_WAIT socket. */
static void reset_close(int fd) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    while (close(fd) < 0 && errno == EINTR) {
    }
}

/*
 * Start one connection from a random source in 127.1.0.0/16. Returns the
 * socket, in flight; or -1 when it completed or failed at once (counted), or
 * -2 when no socket could be made (out of descriptors: try again later).
 */
static int start_one(const struct sockaddr_in *target) {
    for (int tries = 0; tries < SOURCE_TRIES; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return -2;
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(pick_source());
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            int e = errno;
            close(fd);
            if (e == EADDRINUSE || e == EADDRNOTAVAIL || e == EINTR) {
                counts.addr_retries++;
                continue;
            }
            counts.attempts++, counts.failed++;
            return -1;
        }
        if (connect(fd, (const struct sockaddr *)target, sizeof *target) == 0) {
            counts.attempts++, counts.completed++;
            reset_close(fd);
            return -1;
        }
        int e = errno;
        /* EINTR: the connect goes on asynchronously, as EINPROGRESS does */
        if (e == EINPROGRESS || e == EINTR) {
            counts.attempts++;
            return fd;
        }
        close(fd);
        if (e == EADDRNOTAVAIL || e == EADDRINUSE) {
            /* no free port for this source and target: another source */
            counts.addr_retries++;
            continue;
        }
        counts.attempts++, counts.failed++;
        if (e == ECONNREFUSED) usleep(1000); /* nothing listens: do not spin */
        return -1;
    }
    return -2;
}

static void print_counts(double elapsed, long inflight) {
    printf(
        "{\"completed\": %ld, \"reset\": %ld, \"attempts\": %ld, \"failed\": %ld, \"timeouts\": %ld, \"unfinished\": %ld, "
        "\"addr_retries\": %ld, \"seconds\": %.3f, \"inflight\": %ld}\n",
        counts.completed, counts.reset, counts.attempts, counts.failed, counts.timeouts, counts.unfinished, counts.addr_retries,
        elapsed, inflight);
    fflush(stdout);
}

/*
 * The UDP flood: SOCKETS sockets on random sources, sending in turn; what
 * comes back to them is counted as completed.
 */
static int udp_flood(const struct sockaddr_in *target, double seconds, long sockets, double rate, int bytes) {
    int *fds = calloc(sockets, sizeof *fds);
    char *payload = calloc(1, bytes > 0 ? bytes : 1);
    static char answer[65536];
    if (!fds || !payload) {
        fprintf(stderr, "flood: out of memory\n");
        return 1;
    }
    memset(payload, 'f', bytes);
    for (long i = 0; i < sockets; i++) {
        fds[i] = -1;
        for (int tries = 0; tries < SOURCE_TRIES && fds[i] < 0; tries++) {
            int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) break;
            struct sockaddr_in src;
            memset(&src, 0, sizeof src);
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl(pick_source());
            if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0 ||
                connect(fd, (const struct sockaddr *)target, sizeof *target) < 0) {
                counts.addr_retries++;
                close(fd);
                continue;
            }
            fds[i] = fd;
        }
        if (fds[i] < 0) {
            fprintf(stderr, "flood: could not bind a UDP source socket\n");
            return 1;
        }
    }
    double start = now(), end = start + seconds;
    long next = 0;
    while (!stopping) {
        double t = now();
        if (t >= end) break;
        long budget = 1024;
        if (rate > 0) {
            double allowed = (t - start) * rate + 1 - counts.attempts;
            if (allowed < budget) budget = allowed > 0 ? (long)allowed : 0;
            if (budget == 0) {
                usleep(200);
                continue;
            }
        }
        for (; budget > 0; budget--) {
            int fd = fds[next];
            next = (next + 1) % sockets;
            counts.attempts++;
            if (send(fd, payload, bytes, 0) < 0) counts.failed++;
        }
        /* Anything the flood got back (nothing, when it is filtered). */
        for (long i = 0; i < sockets; i++) {
            while (recv(fds[i], answer, sizeof answer, 0) >= 0) counts.completed++;
        }
    }
    double elapsed = now() - start;
    for (long i = 0; i < sockets; i++) {
        while (recv(fds[i], answer, sizeof answer, 0) >= 0) counts.completed++;
        close(fds[i]);
    }
    print_counts(elapsed, sockets);
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: flood [-s SOURCE] [-u] [-b BYTES] HOST PORT SECONDS INFLIGHT [CPU [RATE [TIMEOUT_MS]]]\n");
    return 2;
}

int main(int argc, char **argv) {
    int udp = 0, bytes = 64, opt;
    while ((opt = getopt(argc, argv, "+s:ub:")) != -1) {
        if (opt == 's') {
            if (parse_source(optarg) < 0) {
                fprintf(stderr, "flood: SOURCE must be an IPv4 address or network: %s\n", optarg);
                return 2;
            }
        } else if (opt == 'u') {
            udp = 1;
        } else if (opt == 'b') {
            bytes = atoi(optarg);
            if (bytes < 0 || bytes > 65000) return usage();
        } else {
            return usage();
        }
    }
    /* The positional arguments, as argv[1...] */
    argc -= optind - 1;
    argv += optind - 1;
    if (argc < 5 || argc > 8) return usage();
    struct sockaddr_in target;
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
        fprintf(stderr, "flood: HOST must be an IPv4 address: %s\n", argv[1]);
        return 2;
    }
    double seconds = atof(argv[3]);
    long inflight = atol(argv[4]);
    if (seconds <= 0 || inflight < 1 || inflight > MAX_INFLIGHT) {
        fprintf(stderr, "flood: SECONDS must be > 0 and INFLIGHT 1..%d\n", MAX_INFLIGHT);
        return 2;
    }
    double rate = argc >= 7 ? atof(argv[6]) : 0;
    double timeout = (argc >= 8 ? atof(argv[7]) : DEFAULT_TIMEOUT_MS) / 1000.0;
    if (timeout <= 0) {
        fprintf(stderr, "flood: TIMEOUT_MS must be > 0\n");
        return 2;
    }
    if (argc >= 6 && atoi(argv[5]) >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[5]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) perror("flood: sched_setaffinity");
    }
    raise_nofile(inflight + 64);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rng_state = ((uint64_t)getpid() << 32) ^ (uint64_t)(now() * 1e9) ^ 0x9e3779b97f4a7c15ULL;

    if (udp) return udp_flood(&target, seconds, inflight, rate, bytes);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("flood: epoll_create1");
        return 1;
    }
    struct slot *slots = calloc(inflight, sizeof *slots);
    struct epoll_event *events = calloc(inflight, sizeof *events);
    long *free_slots = calloc(inflight, sizeof *free_slots);
    if (!slots || !events || !free_slots) {
        fprintf(stderr, "flood: out of memory\n");
        return 1;
    }
    long nfree = 0;
    for (long i = inflight - 1; i >= 0; i--) {
        slots[i].fd = -1;
        free_slots[nfree++] = i;
    }

    double start = now(), end = start + seconds, last_sweep = start;
    double sweep = timeout / 5 < 0.05 ? timeout / 5 : 0.05; /* timeouts checked this often */
    for (;;) {
        double t = now();
        if (stopping || t >= end) break;
        /* Fill the free slots; at most INFLIGHT starts a pass, so that
         * connects failing at once cannot keep us from the clock. */
        long budget = inflight;
        if (rate > 0) {
            /* what the rate allows by now, less what was started */
            double allowed = (t - start) * rate + 1 - counts.attempts;
            if (allowed < budget) budget = allowed > 0 ? (long)allowed : 0;
        }
        for (; nfree > 0 && budget > 0; budget--) {
            long i = free_slots[nfree - 1];
            int fd = start_one(&target);
            if (fd == -2) break; /* out of descriptors or sources: later */
            if (fd == -1) continue;
            struct epoll_event ev;
            ev.events = EPOLLOUT;
            ev.data.u64 = (uint64_t)i;
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                counts.failed++;
                reset_close(fd);
                continue;
            }
            slots[i].fd = fd;
            slots[i].started = t;
            nfree--;
        }
        int wait_ms = (int)((end - t) * 1000) + 1;
        if (wait_ms > 20) wait_ms = 20;
        if (rate > 0 && nfree > 0) wait_ms = 1; /* the rate allows more soon */
        int k = epoll_wait(ep, events, (int)inflight, wait_ms);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("flood: epoll_wait");
            break;
        }
        for (int j = 0; j < k; j++) {
            long i = (long)events[j].data.u64;
            int fd = slots[i].fd;
            if (fd < 0) continue;
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
            if (err == 0 && (events[j].events & (EPOLLERR | EPOLLHUP)) && !(events[j].events & EPOLLOUT)) err = EIO;
            if (err == 0) {
                counts.completed++;
            } else if (err == ECONNRESET || err == EPIPE) {
                /* established, then reset by the server (a refusal that
                 * came before we looked): a completed handshake */
                counts.completed++, counts.reset++;
            } else {
                counts.failed++;
            }
            /* closing removes it from the epoll set */
            reset_close(fd);
            slots[i].fd = -1;
            free_slots[nfree++] = i;
        }
        t = now();
        if (t - last_sweep >= sweep) {
            last_sweep = t;
            for (long i = 0; i < inflight; i++) {
                if (slots[i].fd >= 0 && t - slots[i].started >= timeout) {
                    counts.timeouts++;
                    reset_close(slots[i].fd);
                    slots[i].fd = -1;
                    free_slots[nfree++] = i;
                }
            }
        }
    }
    double elapsed = now() - start;
    for (long i = 0; i < inflight; i++) {
        if (slots[i].fd >= 0) {
            counts.unfinished++;
            reset_close(slots[i].fd);
        }
    }
    print_counts(elapsed, inflight);
    return 0;
}
