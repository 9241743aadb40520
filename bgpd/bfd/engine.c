/*
 * The BFD speaker's per-packet path, compiled: a thread that owns the
 * receive sockets and every session's clock, so that the two packets nearly
 * every cycle is made of cost no Python and no interpreter wakeup.
 *
 * For each session the Python speaker hands over (mr_put) what
 * bgpd.bfd.running works out once per session value: the periodic packet
 * and its cadence, the payload that tells the session nothing new ("quiet"),
 * the detection time. This thread then
 *   - sends the periodic packet, jittered as Cadence.next_tx plans it;
 *   - matches each received packet against its session's quiet payload
 *     (source, TTL and bytes): a match only moves the detection time, to the
 *     kernel's receive time plus the detection time;
 *   - queues every other packet for Python, with its TTL, source and time;
 *   - when a detection time expires (every socket read first), queues the
 *     expiry and stops touching the session.
 * Python reads the queue when the event fd is readable, runs the state
 * machine, and hands the session back. While Python holds a session
 * (mr_hold) this thread leaves it alone and passes its packets on.
 *
 * Wakeups, not packets, are the cost: periodic packets may leave up to each
 * session's "late" (at most half its jitter range) to share a wakeup, and a
 * receive socket that had traffic is read from the timer every BATCH_S until
 * it falls quiet; the kernel's receive time keeps detection exact.
 *
 * Times are CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic()
 * and asyncio's loop.time().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MR_MAX_PAYLOAD 512 /* read at most this much of a datagram */
#define MR_MAX_SHORT 64    /* periodic and quiet payloads: 24 bytes and authentication */
#define MR_MAX_RECEIVERS 8
#define READ_BATCH 256      /* datagrams read from one socket per wakeup */
#define BATCH_S 0.005       /* how late a read may be, to share a wakeup */
#define STAMP_TRUST_S 1.0   /* a receive time further back is a clock step: use now */
#define QUEUE_RETRY_S 0.001 /* an expiry waiting for room in the queue */
#define WAKE_TAG UINT32_MAX

enum { MR_PACKET = 1, MR_EXPIRED = 2 };

/* What Python hands over; mirrored by bgpd/bfd/engine.py. */
struct mr_session {
    uint32_t id; /* the local discriminator */
    int32_t fd;  /* the session's sending socket, owned by Python */
    int32_t connected;
    int32_t family;
    int32_t port;
    uint8_t peer[16];
    int32_t multihop;
    int32_t min_ttl;
    int32_t sending;
    double next_tx;
    double interval;
    double top;
    double soonest;
    double late;
    int32_t has_detect;
    double detect_at;
    double detect_s;
    int32_t tx_len;
    uint8_t tx[MR_MAX_SHORT];
    int32_t rx_len; /* 0: no quiet payload */
    uint8_t rx[MR_MAX_SHORT];
};

struct mr_times {
    double next_tx;
    int32_t has_detect;
    double detect_at;
    double last_quiet; /* when the last quiet payload came; 0: none yet */
    uint64_t sent;
    uint64_t received;
    uint64_t send_errors;
};

struct mr_event {
    int32_t kind;
    uint32_t id; /* MR_EXPIRED */
    double at;   /* MR_PACKET: when the kernel received it */
    int32_t ttl; /* -1: absent */
    int32_t multihop;
    int32_t family;
    uint8_t src[16];
    int32_t len;
    uint8_t data[MR_MAX_PAYLOAD];
};

struct slot {
    struct mr_session s;
    int held;
    double last_quiet;
    size_t dense; /* index in engine.dense */
    uint64_t sent, received, send_errors;
};

/* When the timer must look at a session at the earliest, and when it must wake
 * for it at the latest: a periodic packet leaves once it is due, in any wakeup
 * up to ``late`` after. Both are lower bounds: a quiet packet only moves a
 * detection time later, and the session is looked at, and its times worked
 * out again, when the earlier one comes. */
struct due {
    double look, wake;
};

struct receiver {
    int fd;
    int multihop;
    int polling;    /* read from the timer rather than from epoll */
    double poll_at; /* while polling: its next read */
};

struct mr_engine {
    pthread_mutex_t mu;
    pthread_t thread;
    int started, stop;
    int epfd, wakefd, eventfd;
    struct receiver rx[MR_MAX_RECEIVERS];
    int nrx;
    struct slot **dense; /* every session, for the timer's pass */
    struct due *due;     /* by dense index, so that a pass reads this array
                          * rather than every slot */
    size_t n, dense_cap;
    struct slot **table; /* open addressing by id; NULL empty, TOMB removed */
    size_t table_cap, table_used;
    struct mr_event *ring;
    size_t ring_cap, ring_head, ring_count;
    uint64_t overflow;
    uint64_t rng;
};

static struct slot tomb;
#define TOMB (&tomb)

static double mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double realtime(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double jitter(struct mr_engine *e) /* uniform in [0, 1): xorshift64* */
{
    e->rng ^= e->rng >> 12;
    e->rng ^= e->rng << 25;
    e->rng ^= e->rng >> 27;
    return (double)((e->rng * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

/* ---- sessions by id ---- */

static size_t hash(uint32_t id, size_t cap)
{
    return (size_t)(id * 0x9E3779B1u) & (cap - 1);
}

static struct slot **find(struct mr_engine *e, uint32_t id)
{
    for (size_t i = hash(id, e->table_cap);; i = (i + 1) & (e->table_cap - 1)) {
        struct slot *s = e->table[i];
        if (s == NULL)
            return NULL;
        if (s != TOMB && s->s.id == id)
            return &e->table[i];
    }
}

static struct slot *lookup(struct mr_engine *e, uint32_t id)
{
    struct slot **p = find(e, id);
    return p == NULL ? NULL : *p;
}

static int rehash(struct mr_engine *e, size_t cap)
{
    struct slot **t = calloc(cap, sizeof *t);
    if (t == NULL)
        return -1;
    for (size_t k = 0; k < e->n; k++) {
        size_t i = hash(e->dense[k]->s.id, cap);
        while (t[i] != NULL)
            i = (i + 1) & (cap - 1);
        t[i] = e->dense[k];
    }
    free(e->table);
    e->table = t;
    e->table_cap = cap;
    e->table_used = e->n;
    return 0;
}

static struct slot *insert(struct mr_engine *e, uint32_t id)
{
    if (e->n == e->dense_cap) {
        size_t cap = e->dense_cap * 2;
        struct slot **d = realloc(e->dense, cap * sizeof *d);
        if (d == NULL)
            return NULL;
        e->dense = d;
        struct due *due = realloc(e->due, cap * sizeof *due);
        if (due == NULL)
            return NULL;
        e->due = due;
        e->dense_cap = cap;
    }
    if (2 * (e->table_used + 1) > e->table_cap) { /* at most half full, tombstones counted */
        size_t cap = 32;
        while (cap < 4 * (e->n + 1))
            cap *= 2;
        if (rehash(e, cap) != 0)
            return NULL;
    }
    struct slot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->s.id = id;
    size_t i = hash(id, e->table_cap);
    while (e->table[i] != NULL && e->table[i] != TOMB)
        i = (i + 1) & (e->table_cap - 1);
    if (e->table[i] == NULL)
        e->table_used++;
    e->table[i] = s;
    s->dense = e->n;
    e->due[e->n] = (struct due){INFINITY, INFINITY};
    e->dense[e->n++] = s;
    return s;
}

static void erase(struct mr_engine *e, struct slot **p)
{
    struct slot *s = *p;
    *p = TOMB;
    struct slot *last = e->dense[--e->n];
    e->dense[s->dense] = last;
    e->due[s->dense] = e->due[e->n];
    last->dense = s->dense;
    free(s);
}

/* ---- the queue to Python ---- */

static struct mr_event *push(struct mr_engine *e)
{
    if (e->ring_count == e->ring_cap)
        return NULL;
    struct mr_event *ev = &e->ring[(e->ring_head + e->ring_count) % e->ring_cap];
    if (e->ring_count++ == 0) {
        uint64_t one = 1;
        (void)!write(e->eventfd, &one, sizeof one); /* Python reads it, then takes all */
    }
    return ev;
}

/* ---- receiving ---- */

static int same_source(const struct mr_session *s, const struct sockaddr_storage *from)
{
    if (from->ss_family != s->family)
        return 0;
    if (s->family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)from)->sin_addr, s->peer, 4) == 0;
    return memcmp(&((const struct sockaddr_in6 *)from)->sin6_addr, s->peer, 16) == 0;
}

static int ttl_ok(const struct mr_session *s, const struct receiver *r, int ttl)
{
    if (s->multihop != r->multihop)
        return 0;
    return s->multihop ? ttl >= s->min_ttl : ttl == 255;
}

/* Reads what ``r`` holds, up to READ_BATCH datagrams; how many it read. */
static int drain(struct mr_engine *e, struct receiver *r, double now)
{
    double offset = realtime() - now, earliest = now - STAMP_TRUST_S;
    uint8_t buf[MR_MAX_PAYLOAD];
    union {
        char space[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct timespec)) + 64];
        struct cmsghdr align;
    } control;
    int n = 0;
    while (n < READ_BATCH) {
        struct sockaddr_storage from;
        struct iovec iov = {buf, sizeof buf};
        struct msghdr m = {
            .msg_name = &from,
            .msg_namelen = sizeof from,
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = control.space,
            .msg_controllen = sizeof control.space,
        };
        ssize_t len = recvmsg(r->fd, &m, MSG_DONTWAIT);
        if (len < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN; or an ICMP error surfacing: nothing to read */
        }
        n++;
        int ttl = -1;
        double at = now;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
                c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
                struct timespec t;
                memcpy(&t, CMSG_DATA(c), sizeof t);
                at = (double)t.tv_sec + (double)t.tv_nsec * 1e-9 - offset;
                at = at > now ? now : at < earliest ? earliest : at;
            } else if (((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) ||
                        (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_HOPLIMIT)) &&
                       c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                memcpy(&ttl, CMSG_DATA(c), sizeof ttl);
            }
        }
        if (len >= 12) {
            uint32_t your = (uint32_t)buf[8] << 24 | (uint32_t)buf[9] << 16 |
                            (uint32_t)buf[10] << 8 | buf[11];
            struct slot *s = your ? lookup(e, your) : NULL;
            if (s != NULL && !s->held && s->s.rx_len == len && ttl_ok(&s->s, r, ttl) &&
                memcmp(buf, s->s.rx, (size_t)len) == 0 && same_source(&s->s, &from)) {
                s->received++;
                s->last_quiet = at;
                s->s.detect_at = at + s->s.detect_s;
                continue;
            }
        }
        struct mr_event *ev = push(e);
        if (ev == NULL) {
            e->overflow++;
            continue;
        }
        ev->kind = MR_PACKET;
        ev->id = 0;
        ev->at = at;
        ev->ttl = ttl;
        ev->multihop = r->multihop;
        ev->family = from.ss_family;
        memset(ev->src, 0, sizeof ev->src);
        if (from.ss_family == AF_INET)
            memcpy(ev->src, &((struct sockaddr_in *)&from)->sin_addr, 4);
        else if (from.ss_family == AF_INET6)
            memcpy(ev->src, &((struct sockaddr_in6 *)&from)->sin6_addr, 16);
        ev->len = (int32_t)len;
        memcpy(ev->data, buf, (size_t)len);
    }
    return n;
}

static void watch(struct mr_engine *e, int i, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)i};
    epoll_ctl(e->epfd, EPOLL_CTL_MOD, e->rx[i].fd, &ev);
}

/* The busy sockets whose read is due, read from the timer (a quiet one goes
 * back to epoll); when the next read is due. */
static double poll_busy(struct mr_engine *e, double now)
{
    double wake = INFINITY;
    for (int i = 0; i < e->nrx; i++) {
        struct receiver *r = &e->rx[i];
        if (!r->polling)
            continue;
        if (r->poll_at <= now) {
            if (drain(e, r, now) == 0) {
                r->polling = 0;
                watch(e, i, EPOLLIN);
                continue;
            }
            r->poll_at = now + BATCH_S;
        }
        if (r->poll_at < wake)
            wake = r->poll_at;
    }
    return wake;
}

static void readable(struct mr_engine *e, int i, double now)
{
    struct receiver *r = &e->rx[i];
    if (!r->polling && drain(e, r, now) > 0) {
        r->polling = 1;
        r->poll_at = now + BATCH_S;
        watch(e, i, 0);
    }
}

/* ---- sending ---- */

static void send_periodic(struct slot *s)
{
    const struct mr_session *p = &s->s;
    for (int attempt = 0; attempt < (p->connected ? 2 : 1); attempt++) {
        ssize_t r;
        if (p->connected) {
            /* a connected socket reports an earlier ICMP error on the next
             * send, which then did not go out: worth a second try */
            r = send(p->fd, p->tx, (size_t)p->tx_len, MSG_DONTWAIT);
        } else if (p->family == AF_INET) {
            struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
            memcpy(&to.sin_addr, p->peer, 4);
            r = sendto(p->fd, p->tx, (size_t)p->tx_len, MSG_DONTWAIT, (struct sockaddr *)&to,
                       sizeof to);
        } else {
            struct sockaddr_in6 to = {.sin6_family = AF_INET6,
                                      .sin6_port = htons((uint16_t)p->port)};
            memcpy(&to.sin6_addr, p->peer, 16);
            r = sendto(p->fd, p->tx, (size_t)p->tx_len, MSG_DONTWAIT, (struct sockaddr *)&to,
                       sizeof to);
        }
        if (r >= 0) {
            s->sent++;
            return;
        }
    }
    s->send_errors++; /* no route, a full buffer: the timers cope */
}

/* Cadence.next_tx: planned from when this packet was due, never sooner than
 * 75 % of the interval after it left. */
static double next_tx(struct mr_engine *e, const struct mr_session *p, double now)
{
    double gap = p->interval * (p->top - (p->top - 0.75) * jitter(e)) - p->late;
    if (gap < 0.75 * p->interval)
        gap = 0.75 * p->interval;
    double planned = p->next_tx + gap, soonest = now + p->soonest;
    return planned > soonest ? planned : soonest;
}

/* ---- the timer ---- */

/* Whatever is due at ``now``; when to look again. */
static double due(struct mr_engine *e, double now)
{
    double wake = INFINITY;
    int drained = 0;
    for (size_t k = 0; k < e->n; k++) {
        struct due *d = &e->due[k];
        if (d->look > now) {
            if (d->wake < wake)
                wake = d->wake;
            continue;
        }
        struct slot *s = e->dense[k];
        struct mr_session *p = &s->s;
        *d = (struct due){INFINITY, INFINITY};
        if (s->held)
            continue;
        if (p->has_detect && p->detect_at <= now && !drained) {
            /* a packet still in a socket may save the session */
            drained = 1;
            for (int i = 0; i < e->nrx; i++)
                drain(e, &e->rx[i], now);
        }
        if (p->has_detect && p->detect_at <= now) {
            struct mr_event *ev = push(e);
            if (ev == NULL) {
                d->look = d->wake = now + QUEUE_RETRY_S;
                if (d->wake < wake)
                    wake = d->wake;
                continue;
            }
            memset(ev, 0, offsetof(struct mr_event, data));
            ev->kind = MR_EXPIRED;
            ev->id = p->id;
            ev->at = now;
            s->held = 1;
            continue;
        }
        if (p->sending) {
            if (p->next_tx <= now) {
                send_periodic(s);
                p->next_tx = next_tx(e, p, now);
            }
            *d = (struct due){p->next_tx, p->next_tx + p->late};
        }
        if (p->has_detect && p->detect_at < d->wake)
            d->wake = p->detect_at;
        if (p->has_detect && p->detect_at < d->look)
            d->look = p->detect_at;
        if (d->wake < wake)
            wake = d->wake;
    }
    return wake;
}

static void *run(void *arg)
{
    struct mr_engine *e = arg;
    struct epoll_event events[MR_MAX_RECEIVERS + 1];
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        double now = mono();
        double wake = poll_busy(e, now), timers = due(e, now);
        if (timers < wake)
            wake = timers;
        pthread_mutex_unlock(&e->mu);
        struct timespec timeout, *t = NULL;
        if (wake != INFINITY) {
            double left = wake - mono();
            if (left < 0)
                left = 0;
            timeout.tv_sec = (time_t)left;
            timeout.tv_nsec = (long)((left - (double)timeout.tv_sec) * 1e9);
            t = &timeout;
        }
        int n = epoll_pwait2(e->epfd, events, MR_MAX_RECEIVERS + 1, t, NULL);
        pthread_mutex_lock(&e->mu);
        now = mono();
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == WAKE_TAG) {
                uint64_t count;
                (void)!read(e->wakefd, &count, sizeof count);
            } else {
                readable(e, (int)events[i].data.u32, now);
            }
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

static void poke(struct mr_engine *e) /* the thread plans its wakeup again */
{
    uint64_t one = 1;
    (void)!write(e->wakefd, &one, sizeof one);
}

/* ---- the interface (bgpd/bfd/engine.py) ---- */

struct mr_engine *mr_new(uint32_t queue)
{
    struct mr_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->epfd = e->wakefd = e->eventfd = -1;
    pthread_mutex_init(&e->mu, NULL);
    e->ring_cap = queue;
    e->ring = calloc(queue, sizeof *e->ring);
    e->dense_cap = 16;
    e->dense = calloc(e->dense_cap, sizeof *e->dense);
    e->due = calloc(e->dense_cap, sizeof *e->due);
    e->table_cap = 32;
    e->table = calloc(e->table_cap, sizeof *e->table);
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = WAKE_TAG};
    if (getrandom(&e->rng, sizeof e->rng, 0) != sizeof e->rng)
        e->rng = (uint64_t)realtime();
    e->rng |= 1;
    if (e->ring == NULL || e->dense == NULL || e->due == NULL || e->table == NULL ||
        e->epfd < 0 || e->wakefd < 0 || e->eventfd < 0 ||
        epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wakefd, &ev) != 0) {
        free(e->ring);
        free(e->dense);
        free(e->due);
        free(e->table);
        int fds[] = {e->epfd, e->wakefd, e->eventfd};
        for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        pthread_mutex_destroy(&e->mu);
        free(e);
        return NULL;
    }
    return e;
}

int mr_event_fd(struct mr_engine *e)
{
    return e->eventfd;
}

/* Before mr_start: a receive socket (non-blocking, with SO_TIMESTAMPNS and
 * the TTL's control message on), owned by the caller. */
int mr_add_receiver(struct mr_engine *e, int fd, int multihop)
{
    if (e->started || e->nrx == MR_MAX_RECEIVERS)
        return -EINVAL;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)e->nrx};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -errno;
    e->rx[e->nrx++] = (struct receiver){.fd = fd, .multihop = multihop};
    return 0;
}

int mr_start(struct mr_engine *e)
{
    /* signals stay the interpreter's: the thread starts with them blocked */
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before);
    int err = pthread_create(&e->thread, NULL, run, e);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    if (err == 0)
        e->started = 1;
    return -err;
}

/* Stops the thread and frees the engine; the caller's sockets stay open. */
void mr_free(struct mr_engine *e)
{
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_mutex_unlock(&e->mu);
        poke(e);
        pthread_join(e->thread, NULL);
    }
    for (size_t k = 0; k < e->n; k++)
        free(e->dense[k]);
    free(e->dense);
    free(e->due);
    free(e->table);
    free(e->ring);
    close(e->epfd);
    close(e->wakefd);
    close(e->eventfd);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* Adds or replaces a session and hands it (back) to the thread. */
int mr_put(struct mr_engine *e, const struct mr_session *p)
{
    if (p->tx_len < 0 || p->tx_len > MR_MAX_SHORT || p->rx_len < 0 || p->rx_len > MR_MAX_SHORT ||
        (p->family != AF_INET && p->family != AF_INET6))
        return -EINVAL;
    pthread_mutex_lock(&e->mu);
    struct slot *s = lookup(e, p->id);
    if (s == NULL)
        s = insert(e, p->id);
    if (s != NULL) {
        s->s = *p;
        s->held = 0;
        e->due[s->dense] = (struct due){0, 0}; /* its times are worked out at once */
    }
    pthread_mutex_unlock(&e->mu);
    if (s == NULL)
        return -ENOMEM;
    poke(e);
    return 0;
}

static void times_of(const struct slot *s, struct mr_times *out)
{
    out->next_tx = s->s.next_tx;
    out->has_detect = s->s.has_detect;
    out->detect_at = s->s.detect_at;
    out->last_quiet = s->last_quiet;
    out->sent = s->sent;
    out->received = s->received;
    out->send_errors = s->send_errors;
}

/* The session's times and counters; with ``hold``, the thread leaves it
 * alone until the next mr_put. */
int mr_get(struct mr_engine *e, uint32_t id, int hold, struct mr_times *out)
{
    pthread_mutex_lock(&e->mu);
    struct slot *s = lookup(e, id);
    if (s != NULL) {
        times_of(s, out);
        if (hold)
            s->held = 1;
    }
    pthread_mutex_unlock(&e->mu);
    return s == NULL ? -ENOENT : 0;
}

/* Forgets a session; once this returns its socket is never used again. */
int mr_drop(struct mr_engine *e, uint32_t id)
{
    pthread_mutex_lock(&e->mu);
    struct slot **p = find(e, id);
    if (p != NULL)
        erase(e, p);
    pthread_mutex_unlock(&e->mu);
    return p == NULL ? -ENOENT : 0;
}

/* Moves up to ``max`` queued events to ``out``; how many. */
int mr_take(struct mr_engine *e, struct mr_event *out, int max)
{
    pthread_mutex_lock(&e->mu);
    int n = 0;
    while (n < max && e->ring_count > 0) {
        out[n++] = e->ring[e->ring_head];
        e->ring_head = (e->ring_head + 1) % e->ring_cap;
        e->ring_count--;
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* Packets dropped because the queue to Python was full. */
uint64_t mr_overflow(struct mr_engine *e)
{
    pthread_mutex_lock(&e->mu);
    uint64_t n = e->overflow;
    pthread_mutex_unlock(&e->mu);
    return n;
}
