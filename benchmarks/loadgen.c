/*
 * Load generator and reference echo server for the protoshim benchmarks.
 *
 * Built at bench time with `gcc -O2 -o loadgen loadgen.c`.  One process, one
 * thread, epoll, non-blocking sockets, so it can be pinned to one core and
 * its own CPU use reported next to each result.
 *
 *   loadgen echo   HOST PORT CONNS SIZE SECONDS WARMUP closed loop ping-pong
 *   loadgen rate   HOST PORT CONNS SIZE RATE SECONDS   open loop, fixed rate
 *   loadgen hold   HOST PORT COUNTS PER_ADDRESS        open, ping once, wait
 *   loadgen storm  HOST PORT CONNS WINDOW PER_ADDRESS SECONDS
 *                                                      accept storm, then hold
 *   loadgen ws     HOST PORT PATH CONNS SIZE SECONDS WARMUP
 *                                                      WebSocket echo, closed loop
 *   loadgen server PORT                                trivial echo server
 *
 * Every mode but `server` prints one JSON object on stdout (`hold`: one per
 * count it reaches).
 *
 * Echoed bytes are checked: the stream sent on every connection is the
 * pattern byte(i) = i % 251 of its offset i, and each byte that comes back
 * must match it, so a server that loses, reorders or invents data fails the
 * run instead of looking fast.  In `ws` mode every echoed frame must be the
 * exact unmasked frame of the text message sent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define PATTERN 251
#define READ_CHUNK (256 * 1024)
#define MAX_EVENTS 256

static unsigned char pattern[PATTERN + READ_CHUNK];
static unsigned char readbuf[READ_CHUNK];

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- latency samples ---------------------------------------------------- */

typedef struct {
    double *v;
    size_t n, cap;
} samples_t;

static void sample_add(samples_t *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) die("realloc");
    }
    s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(samples_t *s, double p) {
    if (s->n == 0) return -1.0;
    size_t i = (size_t)(p / 100.0 * (double)(s->n - 1) + 0.5);
    return s->v[i];
}

/* ---- connections -------------------------------------------------------- */

/* Scheduled sends not yet answered, per connection (rate mode). */
typedef struct {
    double *t;
    uint64_t *end;
    size_t head, len, cap;
} fifo_t;

typedef struct {
    int fd;
    uint64_t sent;     /* bytes written so far */
    uint64_t target;   /* bytes that should have been written */
    uint64_t received; /* bytes read back so far */
    double round_start;
    int want_out;
    fifo_t due;
} conn_t;

static void fifo_push(fifo_t *f, double t, uint64_t end) {
    if (f->len == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        double *t2 = malloc(cap * sizeof(double));
        uint64_t *e2 = malloc(cap * sizeof(uint64_t));
        if (!t2 || !e2) die("malloc");
        for (size_t i = 0; i < f->len; i++) {
            t2[i] = f->t[(f->head + i) % f->cap];
            e2[i] = f->end[(f->head + i) % f->cap];
        }
        free(f->t);
        free(f->end);
        f->t = t2;
        f->end = e2;
        f->head = 0;
        f->cap = cap;
    }
    size_t i = (f->head + f->len) % f->cap;
    f->t[i] = t;
    f->end[i] = end;
    f->len++;
}

static struct sockaddr_in server_address(const char *host, int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: not an IPv4 address: %s\n", host);
        exit(2);
    }
    return sa;
}

/*
 * One source address holds at most one connection per ephemeral port to a
 * given server port (about 28,000 with Linux's default range), so `hold`
 * and `storm` give connection i the source 127.0.0.(1 + i / PER_ADDRESS)
 * when PER_ADDRESS > 0; the whole of 127/8 is loopback.  The port is left
 * to connect() (IP_BIND_ADDRESS_NO_PORT), which may reuse a port that
 * another source address already uses.
 */
static void bind_source(int fd, int i, int per_address) {
    if (per_address <= 0) return;
    int block = i / per_address;
    if (block > 253) {
        fprintf(stderr, "loadgen: more than 254 source addresses needed\n");
        exit(2);
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0)
        die("IP_BIND_ADDRESS_NO_PORT");
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)block);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind source address");
}

static int source_addresses(int nconns, int per_address) {
    return per_address > 0 ? (nconns + per_address - 1) / per_address : 1;
}

static int connect_from(const char *host, int port, int i, int per_address) {
    struct sockaddr_in sa = server_address(host, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    bind_source(fd, i, per_address);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int connect_to(const char *host, int port) { return connect_from(host, port, 0, 0); }

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl");
}

/* Write what is due; return -1 when the peer is gone. */
static int pump_out(conn_t *c) {
    while (c->sent < c->target) {
        uint64_t left = c->target - c->sent;
        size_t n = left > READ_CHUNK ? READ_CHUNK : (size_t)left;
        ssize_t w = send(c->fd, pattern + c->sent % PATTERN, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->sent += (uint64_t)w;
    }
    return 0;
}

/* Read what is there and check it; return bytes read, -1 on EOF or error. */
static long pump_in(conn_t *c) {
    long total = 0;
    for (;;) {
        ssize_t r = recv(c->fd, readbuf, sizeof readbuf, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return total;
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return -1;
        if ((uint64_t)r + c->received > c->sent ||
            memcmp(readbuf, pattern + c->received % PATTERN, (size_t)r) != 0) {
            fprintf(stderr, "loadgen: echoed bytes do not match what was sent\n");
            exit(3);
        }
        c->received += (uint64_t)r;
        total += r;
        if ((size_t)r < sizeof readbuf) return total;
    }
}

static void watch(int ep, conn_t *c, int out) {
    if (c->want_out == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = out;
}

static conn_t *open_all(const char *host, int port, int nconns, int ep) {
    conn_t *conns = calloc((size_t)nconns, sizeof(conn_t));
    if (!conns) die("calloc");
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = connect_to(host, port);
        set_nonblocking(conns[i].fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0) die("epoll_ctl");
    }
    return conns;
}

static void print_result(const char *mode, int nconns, int size, double seconds, uint64_t rounds,
                         uint64_t bytes, double cpu, samples_t *lat, uint64_t behind) {
    qsort(lat->v, lat->n, sizeof(double), cmp_double);
    printf("{\"mode\": \"%s\", \"connections\": %d, \"size\": %d, \"seconds\": %.6f, "
           "\"rounds\": %llu, \"rounds_per_s\": %.3f, \"bytes_per_s\": %.1f, "
           "\"client_cpu\": %.4f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, "
           "\"late_at_end\": %llu}\n",
           mode, nconns, size, seconds, (unsigned long long)rounds, (double)rounds / seconds,
           (double)bytes / seconds, cpu / seconds, percentile(lat, 50) * 1e6,
           percentile(lat, 99) * 1e6, lat->n ? lat->v[lat->n - 1] * 1e6 : -1.0,
           (unsigned long long)behind);
}

/* ---- echo: closed loop --------------------------------------------------- */

/*
 * The first WARMUP seconds are not counted: fresh connections start with
 * small windows and buffers that the kernel grows as data flows, and
 * counting that ramp would measure it instead of the server.
 */
static int run_echo(const char *host, int port, int nconns, int size, double seconds,
                    double warmup) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    conn_t *conns = open_all(host, port, nconns, ep);
    samples_t lat = {0};
    uint64_t rounds = 0, bytes = 0;
    double start = now(), cpu0 = cpu_seconds(), end = start + warmup + seconds;
    double measure_from = start + warmup;
    int counting = warmup <= 0;
    for (int i = 0; i < nconns; i++) {
        conns[i].target = (uint64_t)size;
        conns[i].round_start = start;
        if (pump_out(&conns[i]) < 0) die("send");
        watch(ep, &conns[i], conns[i].sent < conns[i].target);
    }
    struct epoll_event events[MAX_EVENTS];
    double t = start;
    while (t < end) {
        int timeout = (int)((end - t) * 1000) + 1;
        if (!counting && timeout > (int)((measure_from - t) * 1000) + 1)
            timeout = (int)((measure_from - t) * 1000) + 1;
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        if (!counting && t >= measure_from) {
            counting = 1;
            rounds = bytes = 0;
            lat.n = 0;
            cpu0 = cpu_seconds();
            measure_from = t;
        }
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if ((events[k].events & EPOLLOUT) && pump_out(c) < 0) die("send");
            if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                long r = pump_in(c);
                if (r < 0) {
                    fprintf(stderr, "loadgen: server closed a connection\n");
                    return 1;
                }
                if (c->received == c->target && t < end) {
                    rounds++;
                    bytes += (uint64_t)size;
                    sample_add(&lat, t - c->round_start);
                    c->round_start = t;
                    c->target += (uint64_t)size;
                    if (pump_out(c) < 0) die("send");
                }
            }
            watch(ep, c, c->sent < c->target);
        }
    }
    double elapsed = now() - measure_from, cpu = cpu_seconds() - cpu0;
    print_result("echo", nconns, size, elapsed, rounds, bytes, cpu, &lat, 0);
    return 0;
}

/* ---- rate: open loop at a fixed request rate ------------------------------ */

/*
 * Sends are scheduled every 1/RATE seconds, round-robin over the
 * connections, whether or not earlier ones were answered (messages pipeline
 * on a connection).  Latency runs from the scheduled time, not the time the
 * bytes went out, so a server that stalls is charged for the whole wait of
 * every request scheduled behind the stall (no coordinated omission).
 */
static int run_rate(const char *host, int port, int nconns, int size, double rate,
                    double seconds) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    conn_t *conns = open_all(host, port, nconns, ep);
    /* A timerfd wakes the loop for the next send with sub-millisecond
     * precision; epoll_wait's millisecond timeout would either send late
     * or spin. */
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0) die("epoll_ctl");
    samples_t lat = {0};
    uint64_t rounds = 0, scheduled = 0, total = (uint64_t)(seconds * rate);
    double start = now(), cpu0 = cpu_seconds(), end = start + seconds, interval = 1.0 / rate;
    struct epoll_event events[MAX_EVENTS];
    double t = start;
    for (;;) {
        while (scheduled < total && start + (double)scheduled * interval <= t) {
            conn_t *c = &conns[scheduled % (uint64_t)nconns];
            double due = start + (double)scheduled * interval;
            c->target += (uint64_t)size;
            fifo_push(&c->due, due, c->target);
            if (pump_out(c) < 0) die("send");
            watch(ep, c, c->sent < c->target);
            scheduled++;
        }
        int outstanding = 0;
        for (int i = 0; i < nconns && !outstanding; i++) outstanding = conns[i].due.len > 0;
        if (scheduled == total && !outstanding) break;
        if (t >= end + 10.0) break; /* bounded: give up on answers 10 s late */
        if (scheduled < total) {
            double next = start + (double)scheduled * interval;
            struct itimerspec its = {{0, 0}, {(time_t)next, (long)((next - (double)(time_t)next) * 1e9)}};
            if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
            if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (c == NULL) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("read");
                continue;
            }
            if ((events[k].events & EPOLLOUT) && pump_out(c) < 0) die("send");
            if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (pump_in(c) < 0) {
                    fprintf(stderr, "loadgen: server closed a connection\n");
                    return 1;
                }
                fifo_t *f = &c->due;
                while (f->len && f->end[f->head] <= c->received) {
                    sample_add(&lat, t - f->t[f->head]);
                    rounds++;
                    f->head = (f->head + 1) % f->cap;
                    f->len--;
                }
            }
            watch(ep, c, c->sent < c->target);
        }
    }
    uint64_t behind = 0;
    for (int i = 0; i < nconns; i++) behind += conns[i].due.len;
    double cpu = cpu_seconds() - cpu0;
    print_result("rate", nconns, size, seconds, rounds, rounds * (uint64_t)size, cpu, &lat,
                 behind);
    return behind ? 4 : 0;
}

/* ---- hold: many idle connections ----------------------------------------- */

/* Read stdin up to a newline; return 0 at EOF. */
static int read_line(void) {
    char ch;
    for (;;) {
        ssize_t r = read(0, &ch, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        if (ch == '\n') return 1;
    }
}

/*
 * Open connections one after another, each echoing one byte before the next
 * is opened (so the server has accepted it and built its protocol).  COUNTS
 * is an ascending comma-separated list: on reaching each count, report it
 * and wait for a line on stdin before opening more.  After the last one,
 * keep them all open, idle, until stdin closes or says anything.  A server
 * that takes more than 10 s to echo a byte fails the run.
 */
static int run_hold(const char *host, int port, const char *counts, int per_address) {
    int targets[64], ntargets = 0;
    const char *p = counts;
    for (char *end; ntargets < 64; p = end + 1) {
        targets[ntargets++] = (int)strtol(p, &end, 10);
        int k = ntargets - 1;
        if (end == p || targets[k] <= 0 || (k > 0 && targets[k] <= targets[k - 1])) {
            fprintf(stderr, "loadgen: hold COUNTS must be ascending numbers: %s\n", counts);
            return 2;
        }
        if (*end != ',') break;
    }
    int nconns = targets[ntargets - 1];
    int *fds = calloc((size_t)nconns, sizeof(int));
    if (!fds) die("calloc");
    struct timeval tv = {10, 0};
    double start = now();
    int opened = 0;
    for (int k = 0; k < ntargets; k++) {
        for (; opened < targets[k]; opened++) {
            int fd = fds[opened] = connect_from(host, port, opened, per_address);
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            unsigned char b = (unsigned char)(opened % PATTERN), back = 0;
            if (send(fd, &b, 1, MSG_NOSIGNAL) != 1) die("send");
            if (recv(fd, &back, 1, MSG_WAITALL) != 1) die("recv");
            if (back != b) {
                fprintf(stderr, "loadgen: wrong byte echoed\n");
                return 3;
            }
        }
        printf("{\"mode\": \"hold\", \"connections\": %d, \"open_seconds\": %.3f, "
               "\"source_addresses\": %d}\n",
               opened, now() - start, source_addresses(opened, per_address));
        fflush(stdout);
        if (!read_line()) break;
    }
    for (int i = 0; i < opened; i++) close(fds[i]);
    return 0;
}

/* ---- storm: open many connections at once -------------------------------- */

/*
 * Open CONNS non-blocking connections as fast as the server takes them,
 * with at most WINDOW of them not yet answered: each sends one byte once
 * connected, and counts as accepted when the server has echoed it.  The
 * window keeps the listen queue (4096 for the benchmark servers) from
 * overflowing, which would make the kernel drop handshakes and the result
 * a measure of TCP's retransmit timer.  Accepted connections stay open
 * until all are, then all are closed.  The time runs from the first
 * connect() to the last echo; the run gives up after SECONDS (exit 4).
 */
typedef struct {
    int fd;
    double t0;
} storm_conn_t;

static int run_storm(const char *host, int port, int nconns, int window, int per_address,
                     double seconds) {
    struct sockaddr_in sa = server_address(host, port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    storm_conn_t *conns = calloc((size_t)nconns, sizeof(storm_conn_t));
    if (!conns) die("calloc");
    samples_t lat = {0};
    int opened = 0, accepted = 0, one = 1;
    double start = now(), cpu0 = cpu_seconds(), deadline = start + seconds, last = start;
    struct epoll_event events[MAX_EVENTS];
    while (accepted < nconns) {
        for (; opened < nconns && opened - accepted < window; opened++) {
            storm_conn_t *c = &conns[opened];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            if (c->fd < 0) die("socket");
            bind_source(c->fd, opened, per_address);
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->t0 = now();
            if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS)
                die("connect");
            /* Writable once connected: then the byte goes out. */
            struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)opened};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
        }
        double t = now();
        if (t >= deadline) break;
        int n = epoll_wait(ep, events, MAX_EVENTS, (int)((deadline - t) * 1000) + 1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            storm_conn_t *c = &conns[i];
            unsigned char b = (unsigned char)(i % PATTERN), back = 0;
            if (events[k].events & EPOLLOUT) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errno = err;
                    die("connect");
                }
                if (send(c->fd, &b, 1, MSG_NOSIGNAL) != 1) die("send");
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
                continue;
            }
            ssize_t r = recv(c->fd, &back, 1, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r != 1) {
                fprintf(stderr, "loadgen: server closed a connection during the storm\n");
                return 1;
            }
            if (back != b) {
                fprintf(stderr, "loadgen: wrong byte echoed\n");
                return 3;
            }
            /* Held open, no longer watched. */
            if (epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL) < 0) die("epoll_ctl");
            sample_add(&lat, t - c->t0);
            accepted++;
            last = t;
        }
    }
    double elapsed = (accepted == nconns ? last : now()) - start, cpu = cpu_seconds() - cpu0;
    qsort(lat.v, lat.n, sizeof(double), cmp_double);
    printf("{\"mode\": \"storm\", \"connections\": %d, \"accepted\": %d, \"window\": %d, "
           "\"source_addresses\": %d, \"seconds\": %.6f, \"accepts_per_s\": %.1f, "
           "\"client_cpu\": %.4f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f}\n",
           nconns, accepted, window, source_addresses(nconns, per_address), elapsed,
           (double)accepted / elapsed, cpu / elapsed, percentile(&lat, 50) * 1e6,
           percentile(&lat, 99) * 1e6, lat.n ? lat.v[lat.n - 1] * 1e6 : -1.0);
    fflush(stdout);
    for (int i = 0; i < opened; i++) close(conns[i].fd);
    return accepted == nconns ? 0 : 4;
}

/* ---- ws: WebSocket echo, closed loop -------------------------------------- */

/*
 * Each connection makes the opening handshake (blocking, bounded by a receive
 * timeout), then sends one masked text frame of SIZE bytes and waits until
 * the whole echoed frame is back before sending the next: a round is one
 * message out and back.  No extension is offered, so the echo must be the
 * same payload in one unmasked, minimally framed text frame, and it is
 * checked byte by byte.  Sockets are closed without a closing handshake.
 */
#define WS_MAX_PAYLOAD 65535
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="

typedef struct {
    int fd;
    size_t sent, received; /* offsets into the frame out and the frame back */
    double round_start;
    int want_out;
} ws_conn_t;

static unsigned char ws_out[WS_MAX_PAYLOAD + 8], ws_back[WS_MAX_PAYLOAD + 4];
static size_t ws_out_len, ws_back_len;

static size_t ws_frame(unsigned char *buf, const unsigned char *payload, size_t n,
                       const unsigned char *mask) {
    size_t h = 0;
    buf[h++] = 0x81; /* FIN, text */
    unsigned char masked = mask ? 0x80 : 0;
    if (n < 126) {
        buf[h++] = masked | (unsigned char)n;
    } else {
        buf[h++] = masked | 126;
        buf[h++] = (unsigned char)(n >> 8);
        buf[h++] = (unsigned char)n;
    }
    if (mask) {
        memcpy(buf + h, mask, 4);
        h += 4;
    }
    for (size_t i = 0; i < n; i++) buf[h + i] = payload[i] ^ (mask ? mask[i % 4] : 0);
    return h + n;
}

static int ws_open(const char *host, int port, const char *path) {
    int fd = connect_to(host, port);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, host, port);
    if (n <= 0 || (size_t)n >= sizeof req) {
        fprintf(stderr, "loadgen: path too long\n");
        exit(2);
    }
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) die("send handshake");
    /* Read the response head a byte at a time: nothing may follow it yet. */
    char head[4096];
    size_t got = 0;
    while (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0) {
        if (got == sizeof head - 1) {
            fprintf(stderr, "loadgen: handshake response too long\n");
            exit(3);
        }
        ssize_t r = recv(fd, head + got, 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("recv handshake");
        got++;
    }
    head[got] = 0;
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "loadgen: handshake refused: %.80s\n", head);
        exit(3);
    }
    set_nonblocking(fd);
    return fd;
}

static int ws_pump_out(ws_conn_t *c) {
    while (c->sent < ws_out_len) {
        ssize_t w = send(c->fd, ws_out + c->sent, ws_out_len - c->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->sent += (size_t)w;
    }
    return 0;
}

/* Read and check the echo; return -1 on EOF or error. */
static int ws_pump_in(ws_conn_t *c) {
    for (;;) {
        size_t want = ws_back_len - c->received;
        if (want == 0) return 0; /* one frame at a time: the next is not sent yet */
        ssize_t r = recv(c->fd, readbuf, want, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return -1;
        if (memcmp(readbuf, ws_back + c->received, (size_t)r) != 0) {
            fprintf(stderr, "loadgen: echoed frame does not match the message sent\n");
            exit(3);
        }
        c->received += (size_t)r;
    }
}

static void ws_watch(int ep, ws_conn_t *c, int out) {
    if (c->want_out == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = out;
}

static int run_ws(const char *host, int port, const char *path, int nconns, int size,
                  double seconds, double warmup) {
    if (size < 1 || size > WS_MAX_PAYLOAD) {
        fprintf(stderr, "loadgen: ws SIZE must be 1..%d\n", WS_MAX_PAYLOAD);
        return 2;
    }
    unsigned char payload[WS_MAX_PAYLOAD];
    for (int i = 0; i < size; i++) payload[i] = (unsigned char)('a' + i % 26);
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    ws_out_len = ws_frame(ws_out, payload, (size_t)size, mask);
    ws_back_len = ws_frame(ws_back, payload, (size_t)size, NULL);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    ws_conn_t *conns = calloc((size_t)nconns, sizeof(ws_conn_t));
    if (!conns) die("calloc");
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = ws_open(host, port, path);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0) die("epoll_ctl");
    }
    samples_t lat = {0};
    uint64_t rounds = 0;
    double start = now(), cpu0 = cpu_seconds(), end = start + warmup + seconds;
    double measure_from = start + warmup;
    int counting = warmup <= 0;
    for (int i = 0; i < nconns; i++) {
        conns[i].round_start = start;
        if (ws_pump_out(&conns[i]) < 0) die("send");
        ws_watch(ep, &conns[i], conns[i].sent < ws_out_len);
    }
    struct epoll_event events[MAX_EVENTS];
    double t = start;
    while (t < end) {
        int timeout = (int)((end - t) * 1000) + 1;
        if (!counting && timeout > (int)((measure_from - t) * 1000) + 1)
            timeout = (int)((measure_from - t) * 1000) + 1;
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        if (!counting && t >= measure_from) {
            counting = 1;
            rounds = 0;
            lat.n = 0;
            cpu0 = cpu_seconds();
            measure_from = t;
        }
        for (int k = 0; k < n; k++) {
            ws_conn_t *c = events[k].data.ptr;
            if ((events[k].events & EPOLLOUT) && ws_pump_out(c) < 0) die("send");
            if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (ws_pump_in(c) < 0) {
                    fprintf(stderr, "loadgen: server closed a WebSocket\n");
                    return 1;
                }
                if (c->received == ws_back_len && t < end) {
                    rounds++;
                    sample_add(&lat, t - c->round_start);
                    c->round_start = t;
                    c->sent = c->received = 0;
                    if (ws_pump_out(c) < 0) die("send");
                }
            }
            ws_watch(ep, c, c->sent < ws_out_len);
        }
    }
    double elapsed = now() - measure_from, cpu = cpu_seconds() - cpu0;
    for (int i = 0; i < nconns; i++) close(conns[i].fd);
    print_result("ws", nconns, size, elapsed, rounds, rounds * (uint64_t)size, cpu, &lat, 0);
    return 0;
}

/* ---- server: the trivial C echo server ------------------------------------ */

static int run_server(int port) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(ls, 4096) < 0) die("listen");
    socklen_t len = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &len);
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            int fd = events[k].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = recv(fd, readbuf, sizeof readbuf, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                close(fd);
                continue;
            }
            /* Blocking-style flush: the client always reads, so this ends. */
            ssize_t off = 0;
            while (off < r) {
                ssize_t w = send(fd, readbuf + off, (size_t)(r - off), MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) continue;
                    break;
                }
                off += w;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (unsigned char)(i % PATTERN);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (argc == 8 && strcmp(argv[1], "echo") == 0)
        return run_echo(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]),
                        atof(argv[7]));
    if (argc == 8 && strcmp(argv[1], "rate") == 0)
        return run_rate(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]),
                        atof(argv[7]));
    if (argc == 6 && strcmp(argv[1], "hold") == 0)
        return run_hold(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]));
    if (argc == 8 && strcmp(argv[1], "storm") == 0)
        return run_storm(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                         atof(argv[7]));
    if (argc == 9 && strcmp(argv[1], "ws") == 0)
        return run_ws(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atoi(argv[6]),
                      atof(argv[7]), atof(argv[8]));
    if (argc == 3 && strcmp(argv[1], "server") == 0) return run_server(atoi(argv[2]));
    fprintf(stderr,
            "usage: loadgen echo HOST PORT CONNS SIZE SECONDS WARMUP\n"
            "       loadgen rate HOST PORT CONNS SIZE RATE SECONDS\n"
            "       loadgen hold HOST PORT COUNTS PER_ADDRESS\n"
            "       loadgen storm HOST PORT CONNS WINDOW PER_ADDRESS SECONDS\n"
            "       loadgen ws HOST PORT PATH CONNS SIZE SECONDS WARMUP\n"
            "       loadgen server PORT\n");
    return 2;
}
