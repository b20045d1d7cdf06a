#define _GNU_SOURCE
/*
 * udpload: the legitimate side of bench/flood.py's UDP variant.
 *
 *   udpload echo PORT
 *       answer every datagram on 127.0.0.1:PORT with itself, until killed
 *       (the origin).
 *   udpload client HOST PORT SECONDS WINDOW [CPU]
 *       from one socket on 127.0.0.1, keep WINDOW datagrams (64 bytes, each
 *       with a sequence number) in flight to HOST:PORT for SECONDS: each
 *       answer sends the next one; a datagram not answered within 100 ms is
 *       given up and replaced (counted as lost). At the end, one line of JSON:
 *       {"answered": N, "sent": N, "lost": N, "seconds": S}
 *
 * Compiled with gcc by bench/flood.py.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LOST_AFTER 0.1
#define MAX_WINDOW 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int echo(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udpload: bind");
        return 1;
    }
    char buf[65536];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("udpload: recvfrom");
            return 1;
        }
        sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len);
    }
}

static int client(const char *host, int port, double seconds, int window) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "udpload: HOST must be an IPv4 address: %s\n", host);
        return 2;
    }
    struct sockaddr_in me;
    memset(&me, 0, sizeof me);
    me.sin_family = AF_INET;
    me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udpload: connect");
        return 1;
    }
    /* sent[i]: when the datagram with sequence number seq (seq % window == i) left; 0: free */
    double *sent_at = calloc(window, sizeof *sent_at);
    uint64_t *seq_of = calloc(window, sizeof *seq_of);
    uint64_t next = 1;
    long answered = 0, sent = 0, lost = 0;
    char buf[64], in[2048];
    memset(buf, 'u', sizeof buf);
    double start = now(), end = start + seconds;
    for (;;) {
        double t = now();
        if (t >= end) break;
        for (int i = 0; i < window; i++) {
            if (sent_at[i] != 0 && t - sent_at[i] < LOST_AFTER) continue;
            if (sent_at[i] != 0) lost++;
            uint64_t seq = next++;
            memcpy(buf, &seq, sizeof seq);
            if (send(fd, buf, sizeof buf, 0) < 0) {
                sent_at[i] = 0;
                break;
            }
            sent++;
            sent_at[i] = t;
            seq_of[i] = seq;
        }
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, 5);
        for (;;) {
            ssize_t n = recv(fd, in, sizeof in, 0);
            if (n < 0) break;
            if (n < (ssize_t)sizeof(uint64_t)) continue;
            uint64_t seq;
            memcpy(&seq, in, sizeof seq);
            for (int i = 0; i < window; i++) {
                if (sent_at[i] != 0 && seq_of[i] == seq) {
                    answered++;
                    sent_at[i] = 0;
                    break;
                }
            }
        }
    }
    printf("{\"answered\": %ld, \"sent\": %ld, \"lost\": %ld, \"seconds\": %.3f}\n", answered, sent, lost, now() - start);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "echo") == 0) return echo(atoi(argv[2]));
    if ((argc == 6 || argc == 7) && strcmp(argv[1], "client") == 0) {
        int window = atoi(argv[5]);
        if (window < 1 || window > MAX_WINDOW) {
            fprintf(stderr, "udpload: WINDOW must be 1..%d\n", MAX_WINDOW);
            return 2;
        }
        if (argc == 7 && atoi(argv[6]) >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(atoi(argv[6]), &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        return client(argv[2], atoi(argv[3]), atof(argv[4]), window);
    }
    fprintf(stderr, "usage: udpload echo PORT | udpload client HOST PORT SECONDS WINDOW [CPU]\n");
    return 2;
}
