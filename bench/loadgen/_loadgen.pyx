# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The MQTT load generator's engine: one epoll loop over raw non-blocking sockets.

Everything on the data path is C: packets are pre-encoded by Python once
(``bench/loadgen/packets.py``), copied into a connection's output buffer and
patched in place (publisher index, sequence number, send time, packet id);
input is parsed by a minimal incremental reader that knows the fixed header,
PUBLISH, PUBACK, CONNACK and SUBACK. Each (subscriber, publisher) stream keeps
a bitmap of the sequence numbers it received, so a duplicate, a reordering or
a loss is counted exactly.

Flow control is end to end: a publisher may be at most ``window`` messages
ahead of the slowest subscriber that expects its messages (the highest
sequence number seen + 1), and at QoS 1 also at most ``ack_window`` messages
ahead of its PUBACKs. Latency runs are open loop: a timerfd fires at the target
rate and each message carries the CLOCK_MONOTONIC time at which it was written
to the socket; the receive time is taken right after the recv() that returned it.

The payload starts with 20 bytes, host byte order: publisher index (u32),
sequence number (u64), send time in ns (u64); the rest is padding.

Not thread-safe; one Engine per scenario run. Holds the GIL (nothing else runs
in the generator process) and checks for signals every few hundred turns.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove, memset
from libc.errno cimport errno, EAGAIN, EINPROGRESS, EINTR
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    #include <unistd.h>
    #include <fcntl.h>
    #include <sys/prctl.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #ifndef IP_BIND_ADDRESS_NO_PORT
    #define IP_BIND_ADDRESS_NO_PORT 24
    #endif
    static inline uint64_t lg_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    static inline uint32_t lg_get32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t lg_get64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline void lg_put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
    static inline void lg_put64(char *p, uint64_t v) { memcpy(p, &v, 8); }
    static inline int lg_timerslack_1ns(void) { return prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); }
    /* A non-blocking TCP socket to 127.0.0.1:port from src (host order, port chosen at connect). */
    static int lg_open(uint32_t src, uint32_t dst, int port, int *err) {
        int one = 1;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in a;
        if (fd < 0) { *err = errno; return -1; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (src) {
            memset(&a, 0, sizeof a);
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(src);
            a.sin_port = 0;
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { *err = errno; close(fd); return -1; }
        }
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(dst);
        a.sin_port = htons((uint16_t)port);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
            *err = errno; close(fd); return -1;
        }
        *err = 0;
        return fd;
    }
    static int lg_rcvlowat(int fd, int n) {
        return setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &n, sizeof n);
    }
    /* A thread's schedstat: "run_ns wait_ns timeslices"; run and wait in *out (0 on failure). */
    static int lg_schedstat(int fd, uint64_t *run, uint64_t *wait) {
        char b[96];
        ssize_t n = pread(fd, b, sizeof b - 1, 0);
        uint64_t v[2] = {0, 0};
        int k = 0;
        ssize_t i;
        if (n <= 0) return -1;
        for (i = 0; i < n && k < 2; i++) {
            if (b[i] >= '0' && b[i] <= '9') v[k] = v[k] * 10 + (uint64_t)(b[i] - '0');
            else if (b[i] == ' ') k++;
            else break;
        }
        *run = v[0]; *wait = v[1];
        return 0;
    }
    static int open_self_schedstat(void) {
        return open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    }
    static int lg_so_error(int fd) {
        int e = 0; socklen_t l = sizeof e;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0) return errno;
        return e;
    }
    """
    uint64_t lg_now()
    uint32_t lg_get32(const char *p)
    uint64_t lg_get64(const char *p)
    void lg_put32(char *p, uint32_t v)
    void lg_put64(char *p, uint64_t v)
    int lg_timerslack_1ns()
    int lg_open(uint32_t src, uint32_t dst, int port, int *err)
    int lg_so_error(int fd)
    int lg_schedstat(int fd, uint64_t *run, uint64_t *wait)
    int open_self_schedstat()
    int lg_rcvlowat(int fd, int n)

cdef extern from "<unistd.h>":
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t n)

cdef extern from "<sys/socket.h>":
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    enum: MSG_NOSIGNAL
    enum: MSG_DONTWAIT

cdef extern from "<sys/epoll.h>":
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum: EPOLLIN
    enum: EPOLLOUT
    enum: EPOLLERR
    enum: EPOLLHUP
    enum: EPOLL_CTL_ADD
    enum: EPOLL_CTL_MOD
    enum: EPOLL_CTL_DEL
    enum: EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)

cdef extern from "<time.h>":
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    enum: CLOCK_MONOTONIC

cdef extern from "<sys/timerfd.h>":
    cdef struct itimerspec:
        timespec it_interval
        timespec it_value
    enum: TFD_NONBLOCK
    enum: TFD_CLOEXEC
    enum: TFD_TIMER_ABSTIME
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec *new_value, itimerspec *old_value)


# connection states
cdef enum:
    ST_FREE = 0
    ST_CONNECTING = 1
    ST_WAIT_CONNACK = 2
    ST_READY = 3
    ST_CLOSED = 4
    ST_FAILED = 5

cdef uint32_t TIMER_TAG = 0xFFFFFFFF  # epoll tag of the latency send timer (never a connection)
cdef uint32_t TICK_TAG = 0xFFFFFFFE   # epoll tag of the periodic tick of throughput runs

cdef enum:
    MAX_EVENTS = 1024
    IBUF_MIN = 2048
    IBUF_MAX = 1 << 20
    PAYLOAD_HEAD = 20  # publisher index u32, sequence u64, send time u64


cdef struct conn_t:
    int fd
    int state
    int pub_id          # index into pubs, or -1
    int sub_id          # index into subscriber tracks, or -1
    uint32_t evmask
    char *ibuf
    size_t ilen
    size_t icap
    char *obuf
    size_t ohead
    size_t otail
    size_t ocap
    uint64_t subacks
    uint64_t suback_fail
    uint64_t rx_publish
    uint64_t t_connack


cdef struct track_t:     # one (subscriber, publisher) stream
    uint64_t unique
    uint64_t dup
    uint64_t reorder
    uint64_t frontier    # highest sequence number seen + 1
    uint8_t *bits
    uint64_t nbits
    int expected


cdef struct pub_t:
    int conn
    int qos
    uint64_t sent
    uint64_t acked
    uint64_t puback_bad
    char *tpl           # the templates, back to back
    size_t *tpl_off
    uint32_t *tpl_len
    uint32_t *tpl_pay   # offset of the payload inside the packet
    uint32_t ntpl
    uint32_t maxlen
    int *subs           # subscribers that expect this publisher (for the e2e window)
    int nsubs


cdef inline int read_header(const char *b, size_t avail, size_t *rl) noexcept:
    """Header length (2..5), 0 when incomplete, -1 when the remaining length is malformed."""
    cdef size_t v = 0, mult = 1
    cdef int i = 1
    cdef unsigned char byte
    while True:
        if <size_t>i >= avail:
            return 0
        byte = <unsigned char>b[i]
        v += (byte & 127) * mult
        i += 1
        if not (byte & 128):
            break
        if i > 4:
            return -1
        mult *= 128
    rl[0] = v
    return i


cdef inline uint32_t be16(const char *p) noexcept:
    return ((<unsigned char>p[0]) << 8) | (<unsigned char>p[1])


def set_timer_slack_1ns() -> int:
    """Lower this thread's timer slack from 50 µs to 1 ns (precise open-loop timers)."""
    return lg_timerslack_1ns()


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns, the clock of the payload timestamps."""
    return lg_now()


cdef class Engine:
    """Connections, publishers and subscribers of one scenario, and the loops that drive them."""

    cdef int ep
    cdef int port
    cdef uint32_t dst
    cdef conn_t *conns
    cdef int nconns
    cdef int capconns
    cdef pub_t *pubs
    cdef int npubs
    cdef int *sub_conn
    cdef int nsubs
    cdef track_t *tracks     # nsubs x npubs, allocated by finalize()
    cdef epoll_event *events
    cdef int pending         # connects in progress
    cdef uint64_t connected
    cdef uint64_t connect_failed
    cdef uint64_t conns_lost
    cdef uint64_t delivered      # every PUBLISH received with a valid header
    cdef uint64_t unique_expected
    cdef uint64_t unexpected
    cdef uint64_t malformed
    cdef uint64_t proto_errors
    cdef uint64_t last_progress
    cdef int64_t *lat
    cdef int64_t *lat_ts     # send time of each latency in lat
    cdef uint64_t nlat
    # run_latency(sched_fd=...): the broker thread's schedstat sampled before every tick's send
    # and right after receiving a message slower than sched_slow_ns: (time, run, wait) triples
    cdef int sched_fd
    cdef int self_fd         # with sched_self: the generator thread's own, in the same samples
    cdef uint64_t sched_slow_ns
    cdef uint64_t *sched
    cdef uint64_t nsched
    cdef uint64_t sched_cap
    cdef uint64_t lat_cap
    cdef uint64_t lat_from
    cdef uint64_t lat_until
    cdef int finalized
    cdef int tick_fd
    cdef int *lowat_conns   # connections with SO_RCVLOWAT: read on every tick too
    cdef int nlowat
    cdef uint64_t n_recv, b_recv, n_send, b_send, n_wait   # syscalls and bytes, for diagnosis
    cdef uint64_t s_recv, s_brecv, s_send, s_bsend, s_wait
    cdef uint64_t w_recv, w_brecv, w_send, w_bsend, w_wait  # ... within the measured interval
    cdef list _keep              # Python objects whose buffers the C side points into
    cdef bytes user_prefix       # set_credentials(): CONNECT with user name and password
    cdef bytes pass_prefix
    cdef int cred_modulo
    cdef public int first_conn_error

    def __cinit__(self, int port, int max_conns=16, uint32_t dst=0x7F000001):
        self.ep = epoll_create1(EPOLL_CLOEXEC)
        if self.ep < 0:
            raise OSError(errno, "epoll_create1")
        self.port = port
        self.dst = dst
        self.tick_fd = -1
        self.sched_fd = -1
        self.self_fd = -1
        self.capconns = max_conns if max_conns > 0 else 16
        self.conns = <conn_t *>calloc(self.capconns, sizeof(conn_t))
        self.events = <epoll_event *>malloc(MAX_EVENTS * sizeof(epoll_event))
        if self.conns == NULL or self.events == NULL:
            raise MemoryError()
        self._keep = []

    def __dealloc__(self):
        cdef int i
        cdef conn_t *c
        if self.conns != NULL:
            for i in range(self.nconns):
                c = &self.conns[i]
                if c.fd > 0:
                    close(c.fd)
                free(c.ibuf)
                free(c.obuf)
            free(self.conns)
        if self.pubs != NULL:
            for i in range(self.npubs):
                free(self.pubs[i].tpl)
                free(self.pubs[i].tpl_off)
                free(self.pubs[i].tpl_len)
                free(self.pubs[i].tpl_pay)
                free(self.pubs[i].subs)
            free(self.pubs)
        if self.tracks != NULL:
            for i in range(self.nsubs * self.npubs):
                free(self.tracks[i].bits)
            free(self.tracks)
        free(self.sub_conn)
        free(self.lowat_conns)
        free(self.events)
        free(self.lat)
        free(self.lat_ts)
        free(self.sched)
        if self.tick_fd >= 0:
            close(self.tick_fd)
        if self.ep >= 0:
            close(self.ep)

    # --- low level ---------------------------------------------------------------------

    cdef int set_events(self, int ci, uint32_t mask) except -1:
        cdef conn_t *c = &self.conns[ci]
        cdef epoll_event ev
        if c.evmask == mask or c.fd < 0:
            return 0
        ev.events = mask
        ev.data.u64 = 0
        ev.data.u32 = <uint32_t>ci
        if epoll_ctl(self.ep, EPOLL_CTL_MOD if c.evmask else EPOLL_CTL_ADD, c.fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl")
        c.evmask = mask
        return 0

    cdef void lose(self, int ci) noexcept:
        """The connection ended (EOF, error): stop polling it."""
        cdef conn_t *c = &self.conns[ci]
        if c.fd >= 0:
            epoll_ctl(self.ep, EPOLL_CTL_DEL, c.fd, NULL)
            close(c.fd)
            c.fd = -1
        if c.state == ST_CONNECTING or c.state == ST_WAIT_CONNACK:
            self.pending -= 1
            self.connect_failed += 1
            c.state = ST_FAILED
        elif c.state == ST_READY:
            self.conns_lost += 1
            c.state = ST_CLOSED

    cdef int ensure_out(self, conn_t *c, size_t extra) except -1:
        cdef size_t need, cap
        cdef char *nb
        if c.otail + extra <= c.ocap:
            return 0
        if c.ohead > 0:
            memmove(c.obuf, c.obuf + c.ohead, c.otail - c.ohead)
            c.otail -= c.ohead
            c.ohead = 0
            if c.otail + extra <= c.ocap:
                return 0
        need = c.otail + extra
        cap = c.ocap * 2 if c.ocap else 4096
        if cap < need:
            cap = need
        nb = <char *>realloc(c.obuf, cap)
        if nb == NULL:
            raise MemoryError()
        c.obuf = nb
        c.ocap = cap
        return 0

    cdef int flush(self, int ci) except -1:
        """Write what is buffered; wait for EPOLLOUT if the socket is full.

        1: all written; 0: the rest waits for EPOLLOUT; 2: the connection is gone.
        """
        cdef conn_t *c = &self.conns[ci]
        cdef ssize_t r
        while c.ohead < c.otail:
            if c.fd < 0:
                return 2
            r = send(c.fd, c.obuf + c.ohead, c.otail - c.ohead, MSG_NOSIGNAL)
            self.n_send += 1
            if r > 0:
                c.ohead += r
                self.b_send += r
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and errno == EAGAIN:
                self.set_events(ci, EPOLLIN | EPOLLOUT)
                return 0
            else:
                if self.first_conn_error == 0 and c.state == ST_CONNECTING:
                    self.first_conn_error = errno
                self.lose(ci)
                return 2
        c.ohead = 0
        c.otail = 0
        if c.evmask & EPOLLOUT:
            self.set_events(ci, EPOLLIN)
        return 1

    cdef int grow_bits(self, track_t *t, uint64_t seq) except -1:
        cdef uint64_t n = t.nbits * 2 if t.nbits else 65536
        cdef uint8_t *nb
        while n <= seq:
            n *= 2
        nb = <uint8_t *>realloc(t.bits, n // 8)
        if nb == NULL:
            raise MemoryError()
        memset(nb + t.nbits // 8, 0, (n - t.nbits) // 8)
        t.bits = nb
        t.nbits = n
        return 0

    cdef int on_publish(self, conn_t *c, unsigned char b0, const char *body, size_t rl,
                        uint64_t now) except -1:
        cdef int qos = (b0 >> 1) & 3
        cdef size_t off, plen
        cdef uint32_t pid = 0, pub_id
        cdef uint64_t seq, ts, bit
        cdef track_t *t
        cdef char *o
        if rl < 2:
            self.malformed += 1
            return 0
        off = 2 + be16(body)
        if qos:
            if off + 2 > rl:
                self.malformed += 1
                return 0
            pid = be16(body + off)
            off += 2
        if off > rl:
            self.malformed += 1
            return 0
        c.rx_publish += 1
        if qos == 1:
            self.ensure_out(c, 4)
            o = c.obuf + c.otail
            o[0] = <char>0x40
            o[1] = 2
            o[2] = <char>(pid >> 8)
            o[3] = <char>(pid & 255)
            c.otail += 4
        elif qos == 2:
            self.proto_errors += 1  # the generator subscribes at QoS 0 or 1 only
        plen = rl - off
        if plen < PAYLOAD_HEAD:
            self.unexpected += 1
            return 0
        pub_id = lg_get32(body + off)
        seq = lg_get64(body + off + 4)
        ts = lg_get64(body + off + 12)
        if c.sub_id < 0 or pub_id >= <uint32_t>self.npubs or self.tracks == NULL \
                or seq >= self.pubs[pub_id].sent:
            self.unexpected += 1  # not one of ours, or a sequence number never sent
            return 0
        self.delivered += 1
        t = &self.tracks[c.sub_id * self.npubs + pub_id]
        if seq >= t.nbits:
            self.grow_bits(t, seq)
        bit = 1 << (seq & 7)
        if t.bits[seq >> 3] & bit:
            t.dup += 1
            return 0
        t.bits[seq >> 3] |= bit
        t.unique += 1
        if seq + 1 < t.frontier:
            t.reorder += 1
        else:
            t.frontier = seq + 1
        if t.expected:
            self.unique_expected += 1
            self.last_progress = now
        else:
            self.unexpected += 1
        if self.lat != NULL and ts >= self.lat_from and ts < self.lat_until \
                and self.nlat < self.lat_cap:
            self.lat[self.nlat] = <int64_t>(now - ts)
            self.lat_ts[self.nlat] = <int64_t>ts
            self.nlat += 1
            if self.sched_fd >= 0 and now - ts > self.sched_slow_ns:
                self.sched_sample()
        return 0

    cdef void sched_sample(self):
        """Append (time, run, wait[, own run, own wait]) of the broker thread (and the
        generator's); the time is taken after the reads."""
        cdef uint64_t run = 0, wait = 0, orun = 0, owait = 0
        cdef uint64_t *p
        if self.nsched >= self.sched_cap or lg_schedstat(self.sched_fd, &run, &wait) < 0:
            return
        if self.self_fd >= 0:
            lg_schedstat(self.self_fd, &orun, &owait)
        p = &self.sched[5 * self.nsched]
        p[0] = lg_now()
        p[1] = run
        p[2] = wait
        p[3] = orun
        p[4] = owait
        self.nsched += 1

    cdef int handle(self, int ci, unsigned char b0, const char *body, size_t rl,
                    uint64_t now) except -1:
        cdef conn_t *c = &self.conns[ci]
        cdef int typ = b0 >> 4
        cdef size_t j
        cdef pub_t *p
        cdef uint32_t pid
        if typ == 3:
            return self.on_publish(c, b0, body, rl, now)
        if typ == 4:  # PUBACK
            if c.pub_id < 0 or rl < 2:
                self.proto_errors += 1
                return 0
            p = &self.pubs[c.pub_id]
            pid = be16(body)
            if pid != (p.acked % 65535) + 1:
                p.puback_bad += 1
            p.acked += 1
            self.last_progress = now
        elif typ == 2:  # CONNACK
            if c.state == ST_WAIT_CONNACK:
                self.pending -= 1
                if rl >= 2 and body[1] == 0:
                    c.state = ST_READY
                    c.t_connack = now
                    self.connected += 1
                else:
                    c.state = ST_FAILED
                    self.connect_failed += 1
                    if self.first_conn_error == 0:
                        self.first_conn_error = 1000 + (<unsigned char>body[1] if rl >= 2 else 0)
            else:
                self.proto_errors += 1
        elif typ == 9:  # SUBACK
            c.subacks += 1
            for j in range(2, rl):
                if (<unsigned char>body[j]) & 0x80:
                    c.suback_fail += 1
            self.last_progress = now
        elif typ == 11 or typ == 13:  # UNSUBACK, PINGRESP
            pass
        else:
            self.proto_errors += 1
        return 0

    cdef int on_readable(self, int ci, uint64_t now) except -1:
        cdef conn_t *c = &self.conns[ci]
        cdef ssize_t r
        cdef size_t space, p, rl, avail, need, cap
        cdef int h
        cdef char *nb
        if c.fd < 0:
            return 0
        if c.icap - c.ilen < IBUF_MIN // 2:
            cap = c.icap * 2 if c.icap else IBUF_MIN
            nb = <char *>realloc(c.ibuf, cap)
            if nb == NULL:
                raise MemoryError()
            c.ibuf = nb
            c.icap = cap
        space = c.icap - c.ilen
        r = recv(c.fd, c.ibuf + c.ilen, space, 0)
        self.n_recv += 1
        if r == 0:
            self.lose(ci)
            return 0
        if r < 0:
            if errno != EAGAIN and errno != EINTR:
                self.lose(ci)
            return 0
        c.ilen += r
        self.b_recv += r
        p = 0
        while True:
            avail = c.ilen - p
            if avail < 2:
                break
            rl = 0
            h = read_header(c.ibuf + p, avail, &rl)
            if h < 0:
                self.malformed += 1
                self.lose(ci)
                return 0
            if h == 0 or avail < h + rl:
                need = h + rl
                if h > 0 and need > c.icap:  # a packet larger than the buffer: make room for it
                    nb = <char *>realloc(c.ibuf, need)
                    if nb == NULL:
                        raise MemoryError()
                    c.ibuf = nb
                    c.icap = need
                break
            self.handle(ci, <unsigned char>c.ibuf[p], c.ibuf + p + h, rl, now)
            if c.fd < 0:
                return 0
            p += h + rl
        if p:
            memmove(c.ibuf, c.ibuf + p, c.ilen - p)
            c.ilen -= p
        if <size_t>r == space and c.icap < IBUF_MAX:  # the read filled the buffer: read more next time
            nb = <char *>realloc(c.ibuf, c.icap * 2)
            if nb == NULL:
                raise MemoryError()
            c.ibuf = nb
            c.icap *= 2
        if c.otail > c.ohead:  # PUBACKs for what was just read
            self.flush(ci)
        return 0

    def set_credentials(self, bytes user_prefix, bytes pass_prefix, int modulo):
        """Later CONNECTs carry user name ``user_prefix + str(i)`` and password
        ``pass_prefix + str(i)``, with i the connection's index modulo ``modulo`` (so a
        second pass of connections reuses the same users). Empty prefixes: none again."""
        if modulo <= 0:
            raise ValueError("modulo must be positive")
        if len(user_prefix) > 200 or len(pass_prefix) > 200:
            raise ValueError("credential prefixes are limited to 200 bytes")
        self.user_prefix = user_prefix if user_prefix else None
        self.pass_prefix = pass_prefix
        self.cred_modulo = modulo

    cdef int encode_connect(self, int ci, bytes prefix, int keepalive, bint clean) except -1:
        """Append CONNECT (3.1.1, client id = prefix + index) to the output.

        ``clean`` false: Clean Session 0, a persistent session (the broker keeps the
        session and its queue after the connection ends). After ``set_credentials`` it
        carries a user name and password too."""
        cdef conn_t *c = &self.conns[ci]
        cdef char idbuf[24]
        cdef char credbuf[24]
        cdef int idlen = 0, k, v = ci, credlen = 0
        cdef size_t plen = PyBytes_GET_SIZE(prefix)
        cdef size_t cid_len, rl, ulen = 0, pwlen = 0
        cdef char *o
        cdef bint creds = self.user_prefix is not None
        while True:
            idbuf[idlen] = <char>(48 + v % 10)
            idlen += 1
            v //= 10
            if v == 0:
                break
        cid_len = plen + idlen
        rl = 10 + 2 + cid_len
        if creds:
            v = ci % self.cred_modulo
            while True:
                credbuf[credlen] = <char>(48 + v % 10)
                credlen += 1
                v //= 10
                if v == 0:
                    break
            ulen = PyBytes_GET_SIZE(self.user_prefix) + credlen
            pwlen = PyBytes_GET_SIZE(self.pass_prefix) + credlen
            rl += 2 + ulen + 2 + pwlen
        self.ensure_out(c, rl + 4)
        o = c.obuf + c.otail
        o[0] = <char>0x10
        if rl < 128:
            o[1] = <char>rl
            o += 2
        else:
            o[1] = <char>((rl & 127) | 128)
            o[2] = <char>(rl >> 7)
            o += 3
        memcpy(o, b"\x00\x04MQTT\x04\x02", 8)
        if not clean:
            o[7] = 0  # connect flags: Clean Session 0
        if creds:
            o[7] = <char>((<unsigned char>o[7]) | 0xC0)  # User Name and Password flags
        o[8] = <char>(keepalive >> 8)
        o[9] = <char>(keepalive & 255)
        o[10] = <char>(cid_len >> 8)
        o[11] = <char>(cid_len & 255)
        o += 12
        memcpy(o, PyBytes_AS_STRING(prefix), plen)
        o += plen
        for k in range(idlen):
            o[k] = idbuf[idlen - 1 - k]
        o += idlen
        if creds:
            o = self.put_cred(o, self.user_prefix, credbuf, credlen)
            o = self.put_cred(o, self.pass_prefix, credbuf, credlen)
        c.otail = o - c.obuf
        return 0

    cdef char *put_cred(self, char *o, bytes head, char *digits, int ndigits):
        """A length-prefixed string ``head`` + the digits (stored reversed) at ``o``."""
        cdef size_t hlen = PyBytes_GET_SIZE(head)
        cdef size_t n = hlen + ndigits
        cdef int k
        o[0] = <char>(n >> 8)
        o[1] = <char>(n & 255)
        o += 2
        memcpy(o, PyBytes_AS_STRING(head), hlen)
        o += hlen
        for k in range(ndigits):
            o[k] = digits[ndigits - 1 - k]
        return o + ndigits

    cdef int start_connect(self, int ci, int fd, bytes prefix, int keepalive,
                           bint clean) except -1:
        """A connect() was issued: queue CONNECT and try to send it at once.

        On loopback the handshake has usually completed inside connect(), so the
        CONNECT goes out without waiting for EPOLLOUT (three syscalls fewer).
        """
        cdef conn_t *c = &self.conns[ci]
        cdef int r
        c.fd = fd
        c.state = ST_CONNECTING
        self.pending += 1
        self.encode_connect(ci, prefix, keepalive, clean)
        r = self.flush(ci)  # EAGAIN while still connecting: flush waits for EPOLLOUT
        if r == 1:
            c.state = ST_WAIT_CONNACK
            self.set_events(ci, EPOLLIN)
        return 0

    cdef int finish_connect(self, int ci) except -1:
        """EPOLLOUT (or an error) on a connecting socket: send the queued CONNECT."""
        cdef conn_t *c = &self.conns[ci]
        cdef int err = lg_so_error(c.fd)
        if err:
            if self.first_conn_error == 0:
                self.first_conn_error = err
            self.lose(ci)
            return 0
        c.state = ST_WAIT_CONNACK
        self.flush(ci)
        return 0

    cdef int dispatch(self, int nev, uint64_t now) except -1:
        cdef int i, ci
        cdef uint32_t ev
        cdef uint64_t ticks
        cdef int k
        for i in range(nev):
            ev = self.events[i].events
            if self.events[i].data.u32 == TICK_TAG:
                read(self.tick_fd, &ticks, 8)
                for k in range(self.nlowat):  # what is below the low-water mark
                    self.on_readable(self.lowat_conns[k], now)
                continue
            ci = <int>self.events[i].data.u32
            if ci < 0 or ci >= self.nconns:
                continue
            if self.conns[ci].state == ST_CONNECTING:
                self.finish_connect(ci)
                continue
            if ev & EPOLLOUT:
                self.flush(ci)
            if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                self.on_readable(ci, now)
        return 0

    cdef int poll(self, int timeout_ms) except -1:
        cdef int nev = epoll_wait(self.ep, self.events, MAX_EVENTS, timeout_ms)
        self.n_wait += 1
        if nev < 0:
            if errno == EINTR:
                return 0
            raise OSError(errno, "epoll_wait")
        if nev:
            self.dispatch(nev, lg_now())
        return nev

    # --- connections -------------------------------------------------------------------

    def connect(self, int n, list sources, int concurrency, bytes prefix, int keepalive=0,
                double timeout=30.0, bint clean=True):
        """Open ``n`` MQTT connections, at most ``concurrency`` handshakes at a time.

        ``sources``: source addresses (host-order ints; 0 = let the kernel choose),
        used round robin. ``clean`` false: CONNECT with Clean Session 0 (persistent
        sessions). Returns (first index, connected, failed, ns from the first
        connect() to the last CONNACK).
        """
        cdef int first = self.nconns, started = 0, ci, err, fd, turns = 0
        cdef uint64_t base_ok = self.connected, base_fail = self.connect_failed
        cdef uint64_t t0, deadline, t_last = 0
        cdef conn_t *c
        cdef conn_t *nc
        cdef int nsrc = len(sources)
        cdef uint32_t *src = <uint32_t *>malloc((nsrc if nsrc else 1) * sizeof(uint32_t))
        if src == NULL:
            raise MemoryError()
        for ci in range(nsrc):
            src[ci] = <uint32_t>sources[ci]
        if self.nconns + n > self.capconns:
            nc = <conn_t *>realloc(self.conns, (self.nconns + n) * sizeof(conn_t))
            if nc == NULL:
                free(src)
                raise MemoryError()
            memset(nc + self.capconns, 0, (self.nconns + n - self.capconns) * sizeof(conn_t))
            self.conns = nc
            self.capconns = self.nconns + n
        t0 = lg_now()
        deadline = t0 + <uint64_t>(timeout * 1e9)
        try:
            while (self.connected - base_ok) + (self.connect_failed - base_fail) < <uint64_t>n:
                while started < n and self.pending < concurrency:
                    ci = self.nconns
                    self.nconns += 1
                    started += 1
                    c = &self.conns[ci]
                    memset(c, 0, sizeof(conn_t))
                    c.pub_id = -1
                    c.sub_id = -1
                    fd = lg_open(src[ci % nsrc] if nsrc else 0, self.dst, self.port, &err)
                    if fd < 0:
                        c.fd = -1
                        c.state = ST_FAILED
                        self.connect_failed += 1
                        if self.first_conn_error == 0:
                            self.first_conn_error = err
                        continue
                    self.start_connect(ci, fd, prefix, keepalive, clean)
                if lg_now() > deadline:
                    break
                self.poll(5)
                turns += 1
                if turns & 255 == 0:
                    PyErr_CheckSignals()
        finally:
            free(src)
        for ci in range(first, self.nconns):
            if self.conns[ci].state == ST_READY and self.conns[ci].t_connack > t_last:
                t_last = self.conns[ci].t_connack
        return (first, int(self.connected - base_ok), int(self.connect_failed - base_fail),
                int(t_last - t0) if t_last else 0)

    def set_rcvlowat(self, int ci, int nbytes):
        """Wake for connection ``ci`` only when ``nbytes`` are queued (and on every tick).

        Fewer, larger reads when a broker sends one TCP segment per message;
        the 1 ms tick of throughput runs reads whatever is below the mark.
        Only for QoS 0 subscribers in throughput runs.
        """
        cdef int *n
        if lg_rcvlowat(self.conns[ci].fd, nbytes) < 0:
            raise OSError(errno, "setsockopt SO_RCVLOWAT")
        n = <int *>realloc(self.lowat_conns, (self.nlowat + 1) * sizeof(int))
        if n == NULL:
            raise MemoryError()
        self.lowat_conns = n
        n[self.nlowat] = ci
        self.nlowat += 1

    def ready(self, int ci) -> bool:
        return self.conns[ci].state == ST_READY

    def conn_count(self) -> int:
        return self.nconns

    def close_all(self, bint disconnect=True):
        """Send DISCONNECT (best effort) and close every socket."""
        cdef int i
        cdef conn_t *c
        for i in range(self.nconns):
            c = &self.conns[i]
            if c.fd >= 0:
                if disconnect and c.state == ST_READY:
                    send(c.fd, b"\xe0\x00", 2, MSG_NOSIGNAL | MSG_DONTWAIT)
                epoll_ctl(self.ep, EPOLL_CTL_DEL, c.fd, NULL)
                close(c.fd)
                c.fd = -1
                c.state = ST_CLOSED

    # --- roles -------------------------------------------------------------------------

    def add_publisher(self, int ci, int qos, list packets, int payload_size):
        """Make connection ``ci`` a publisher cycling through pre-encoded PUBLISH ``packets``.

        Each packet ends with a payload of ``payload_size`` bytes (>= 20) whose
        head is patched at send time. Returns the publisher index.
        """
        cdef pub_t *p
        cdef size_t total = 0, off = 0
        cdef uint32_t i, n = len(packets)
        cdef bytes pk
        if self.finalized:
            raise RuntimeError("add_publisher after finalize")
        if payload_size < PAYLOAD_HEAD or n == 0:
            raise ValueError("payload_size must be >= 20 and packets non-empty")
        p = <pub_t *>realloc(self.pubs, (self.npubs + 1) * sizeof(pub_t))
        if p == NULL:
            raise MemoryError()
        self.pubs = p
        p = &self.pubs[self.npubs]
        memset(p, 0, sizeof(pub_t))
        p.conn = ci
        p.qos = qos
        for pk in packets:
            total += PyBytes_GET_SIZE(pk)
        p.tpl = <char *>malloc(total)
        p.tpl_off = <size_t *>malloc(n * sizeof(size_t))
        p.tpl_len = <uint32_t *>malloc(n * sizeof(uint32_t))
        p.tpl_pay = <uint32_t *>malloc(n * sizeof(uint32_t))
        if p.tpl == NULL or p.tpl_off == NULL or p.tpl_len == NULL or p.tpl_pay == NULL:
            raise MemoryError()
        for i in range(n):
            pk = packets[i]
            p.tpl_off[i] = off
            p.tpl_len[i] = PyBytes_GET_SIZE(pk)
            p.tpl_pay[i] = PyBytes_GET_SIZE(pk) - payload_size
            if p.tpl_len[i] > p.maxlen:
                p.maxlen = p.tpl_len[i]
            memcpy(p.tpl + off, PyBytes_AS_STRING(pk), PyBytes_GET_SIZE(pk))
            off += PyBytes_GET_SIZE(pk)
        p.ntpl = n
        self.conns[ci].pub_id = self.npubs
        self.npubs += 1
        return self.npubs - 1

    def add_subscriber(self, int ci):
        """Make connection ``ci`` a subscriber; returns the subscriber index."""
        cdef int *s
        if self.finalized:
            raise RuntimeError("add_subscriber after finalize")
        s = <int *>realloc(self.sub_conn, (self.nsubs + 1) * sizeof(int))
        if s == NULL:
            raise MemoryError()
        self.sub_conn = s
        s[self.nsubs] = ci
        self.conns[ci].sub_id = self.nsubs
        self.nsubs += 1
        return self.nsubs - 1

    def finalize(self, list expect):
        """Allocate the streams; ``expect`` lists (subscriber, publisher) pairs that must flow."""
        cdef int s, p, k
        cdef int *ns
        if self.finalized:
            raise RuntimeError("finalize twice")
        self.tracks = <track_t *>calloc(max(1, self.nsubs * self.npubs), sizeof(track_t))
        if self.tracks == NULL:
            raise MemoryError()
        for s, p in expect:
            if not (0 <= s < self.nsubs and 0 <= p < self.npubs):
                raise ValueError(f"no such stream ({s}, {p})")
            if self.tracks[s * self.npubs + p].expected:
                continue
            self.tracks[s * self.npubs + p].expected = 1
            ns = <int *>realloc(self.pubs[p].subs, (self.pubs[p].nsubs + 1) * sizeof(int))
            if ns == NULL:
                raise MemoryError()
            self.pubs[p].subs = ns
            ns[self.pubs[p].nsubs] = s
            self.pubs[p].nsubs += 1
        self.finalized = 1

    # --- subscribing -------------------------------------------------------------------

    def subscribe(self, list jobs, int window=256, double timeout=60.0):
        """Send pre-encoded SUBSCRIBE packets, pipelined ``window`` deep per connection.

        ``jobs``: [(connection index, bytes of back-to-back SUBSCRIBE packets, count)].
        Returns (ns from the first send to the last SUBACK, SUBACKs, refused filters,
        complete).
        """
        cdef int nj = len(jobs), j, h, turns = 0
        cdef int *cis = <int *>malloc(max(1, nj) * sizeof(int))
        cdef const char **blobs = <const char **>malloc(max(1, nj) * sizeof(char *))
        cdef size_t *blen = <size_t *>malloc(max(1, nj) * sizeof(size_t))
        cdef size_t *boff = <size_t *>calloc(max(1, nj), sizeof(size_t))
        cdef uint64_t *count = <uint64_t *>malloc(max(1, nj) * sizeof(uint64_t))
        cdef uint64_t *sent = <uint64_t *>calloc(max(1, nj), sizeof(uint64_t))
        cdef uint64_t *base = <uint64_t *>malloc(max(1, nj) * sizeof(uint64_t))
        cdef uint64_t *fbase = <uint64_t *>malloc(max(1, nj) * sizeof(uint64_t))
        cdef uint64_t t0, deadline, acked, total_acks, fails, t_done = 0
        cdef size_t rl, start, end
        cdef conn_t *c
        cdef bint done = False
        cdef bytes blob
        if not (cis and blobs and blen and boff and count and sent and base and fbase):
            raise MemoryError()
        try:
            for j in range(nj):
                ci_, blob_o, cnt = jobs[j]
                blob = blob_o
                self._keep.append(blob)
                cis[j] = ci_
                blobs[j] = PyBytes_AS_STRING(blob)
                blen[j] = PyBytes_GET_SIZE(blob)
                count[j] = cnt
                base[j] = self.conns[cis[j]].subacks
                fbase[j] = self.conns[cis[j]].suback_fail
            t0 = lg_now()
            deadline = t0 + <uint64_t>(timeout * 1e9)
            while True:
                done = True
                for j in range(nj):
                    c = &self.conns[cis[j]]
                    acked = c.subacks - base[j]
                    if acked < count[j]:
                        done = False
                    if c.fd < 0 or c.otail > c.ohead:
                        continue  # lost, or waiting for EPOLLOUT
                    start = boff[j]
                    end = start
                    while sent[j] < count[j] and sent[j] - acked < <uint64_t>window \
                            and end < blen[j]:
                        h = read_header(blobs[j] + end, blen[j] - end, &rl)
                        if h <= 0:
                            raise ValueError("malformed SUBSCRIBE blob")
                        end += h + rl
                        sent[j] += 1
                    if end > start:
                        self.ensure_out(c, end - start)
                        memcpy(c.obuf + c.otail, blobs[j] + start, end - start)
                        c.otail += end - start
                        boff[j] = end
                        self.flush(cis[j])
                if done:
                    t_done = lg_now()
                    break
                if lg_now() > deadline:
                    break
                self.poll(5)
                turns += 1
                if turns & 255 == 0:
                    PyErr_CheckSignals()
            total_acks = 0
            fails = 0
            for j in range(nj):
                total_acks += self.conns[cis[j]].subacks - base[j]
                fails += self.conns[cis[j]].suback_fail - fbase[j]
            # the last SUBACK arrived in the final poll: t_done is within one turn of it
            return (int((t_done if t_done else lg_now()) - t0), int(total_acks), int(fails),
                    bool(done))
        finally:
            free(cis); free(blobs); free(blen); free(boff); free(count); free(sent)
            free(base); free(fbase)

    # --- publishing --------------------------------------------------------------------

    cdef uint64_t frontier(self, int pi) noexcept:
        """The slowest expected subscriber's highest sequence number + 1 for publisher ``pi``."""
        cdef pub_t *p = &self.pubs[pi]
        cdef uint64_t f = p.sent, x
        cdef int k
        for k in range(p.nsubs):
            x = self.tracks[p.subs[k] * self.npubs + pi].frontier
            if x < f:
                f = x
        return f

    cdef int emit(self, int pi, uint64_t n, uint64_t now) except -1:
        """Append ``n`` PUBLISH packets of publisher ``pi`` to its output (not flushed)."""
        cdef pub_t *p = &self.pubs[pi]
        cdef conn_t *c = &self.conns[p.conn]
        cdef uint64_t k
        cdef uint32_t t, pid
        cdef char *o
        self.ensure_out(c, n * p.maxlen)
        o = c.obuf + c.otail
        for k in range(n):
            t = <uint32_t>(p.sent % p.ntpl)
            memcpy(o, p.tpl + p.tpl_off[t], p.tpl_len[t])
            lg_put32(o + p.tpl_pay[t], <uint32_t>pi)
            lg_put64(o + p.tpl_pay[t] + 4, p.sent)
            lg_put64(o + p.tpl_pay[t] + 12, now)
            if p.qos:
                pid = <uint32_t>(p.sent % 65535) + 1
                o[p.tpl_pay[t] - 2] = <char>(pid >> 8)
                o[p.tpl_pay[t] - 1] = <char>(pid & 255)
            o += p.tpl_len[t]
            p.sent += 1
        c.otail = o - c.obuf
        return 0

    cdef int pump(self, uint64_t window, uint64_t ack_window, uint64_t batch,
                  uint64_t refill, uint64_t now) except -1:
        """Let every publisher that has room for at least ``refill`` messages send.

        Refilling the window only in chunks keeps writes large: topping it up by
        the one message that just arrived would turn the publishers into one
        small write (and the broker into one small read) per message.
        """
        cdef int pi
        cdef pub_t *p
        cdef conn_t *c
        cdef uint64_t inflight, room, ackin
        for pi in range(self.npubs):
            p = &self.pubs[pi]
            c = &self.conns[p.conn]
            if c.state != ST_READY or c.otail > c.ohead:
                continue
            inflight = p.sent - self.frontier(pi)
            if inflight >= window:
                continue
            room = window - inflight
            if p.qos:
                ackin = p.sent - p.acked
                if ackin >= ack_window:
                    continue
                if ack_window - ackin < room:
                    room = ack_window - ackin
            if room < refill:
                continue
            if room > batch:
                room = batch
            self.emit(pi, room, now)
            self.flush(p.conn)
        return 0

    cdef uint64_t expected_total(self) noexcept:
        cdef uint64_t tot = 0
        cdef int pi
        for pi in range(self.npubs):
            tot += self.pubs[pi].sent * <uint64_t>self.pubs[pi].nsubs
        return tot

    cdef bint acks_done(self) noexcept:
        cdef int pi
        for pi in range(self.npubs):
            if self.pubs[pi].qos and self.pubs[pi].acked < self.pubs[pi].sent:
                return False
        return True

    cdef int start_tick(self, uint64_t interval) except -1:
        """A periodic timerfd in the epoll set, so the loops can wait with no timeout.

        epoll_wait with a timeout arms (and cancels) an hrtimer on every sleep,
        which in a virtual machine is a costly MSR write per received segment;
        one timer that fires each ``interval`` ns costs that only once per tick.
        """
        cdef itimerspec its
        cdef epoll_event ev
        self.tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if self.tick_fd < 0:
            raise OSError(errno, "timerfd_create")
        its.it_interval.tv_sec = interval // 1000000000
        its.it_interval.tv_nsec = interval % 1000000000
        its.it_value.tv_sec = its.it_interval.tv_sec
        its.it_value.tv_nsec = its.it_interval.tv_nsec
        if timerfd_settime(self.tick_fd, 0, &its, NULL) < 0:
            raise OSError(errno, "timerfd_settime")
        ev.events = EPOLLIN
        ev.data.u64 = 0
        ev.data.u32 = TICK_TAG
        if epoll_ctl(self.ep, EPOLL_CTL_ADD, self.tick_fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl tick")
        return 0

    cdef void stop_tick(self) noexcept:
        if self.tick_fd >= 0:
            epoll_ctl(self.ep, EPOLL_CTL_DEL, self.tick_fd, NULL)
            close(self.tick_fd)
            self.tick_fd = -1

    def run_throughput(self, double duration, double warmup, uint64_t window,
                       uint64_t ack_window, uint64_t batch, double drain, mark,
                       double stall=1.0, uint64_t refill=0):
        """Publish as fast as the windows allow for ``warmup + duration`` s, then drain.

        A publisher writes when it has room for ``refill`` messages (default: a
        quarter of the smaller window), at most ``batch`` per write. Draining ends
        when every expected message (and PUBACK) is in, when nothing
        arrived for ``stall`` s, or after ``drain`` s. ``mark(0)`` is called when
        the measured interval starts, ``mark(1)`` when it ends (the caller samples
        CPU there). Returns a dict of counts and times.
        """
        cdef uint64_t t0 = lg_now(), now
        cdef uint64_t t_warm = t0 + <uint64_t>(warmup * 1e9)
        cdef uint64_t t_stop = t_warm + <uint64_t>(duration * 1e9)
        cdef uint64_t t_end = 0, t_mark0 = 0, t_mark1 = 0, d0 = 0, d1 = 0, r0 = 0, r1 = 0
        cdef uint64_t idle_ns = <uint64_t>(stall * 1e9)
        cdef int phase = 0, turns = 0
        cdef bint timed_out = False
        if not self.finalized:
            raise RuntimeError("finalize() first")
        if window < 1:
            window = 1
        if ack_window < 1 or ack_window > 65535:
            ack_window = 65535 if ack_window > 65535 else 1
        if refill == 0:
            refill = (window if window < ack_window else ack_window) // 4
        if refill < 1:
            refill = 1
        self.last_progress = t0
        self.start_tick(1000000)
        try:
            while True:
                now = lg_now()
                if phase == 0 and now >= t_warm:
                    phase = 1
                    mark(0)
                    t_mark0 = lg_now()
                    d0 = self.unique_expected
                    r0 = self.delivered
                    self.snap0()
                if phase == 1 and now >= t_stop:
                    phase = 2
                    t_mark1 = lg_now()
                    d1 = self.unique_expected
                    r1 = self.delivered
                    self.snap1()
                    mark(1)
                    t_end = lg_now() + <uint64_t>(drain * 1e9)
                    self.last_progress = lg_now()
                if phase == 2:
                    if self.unique_expected >= self.expected_total() and self.acks_done():
                        break
                    now = lg_now()
                    if now >= t_end or now - self.last_progress > idle_ns:
                        timed_out = True
                        break
                else:
                    self.pump(window, ack_window, batch, refill, now)
                self.poll(-1)  # the 1 ms tick bounds the wait
                turns += 1
                if turns & 255 == 0:
                    PyErr_CheckSignals()
        finally:
            self.stop_tick()
        return self._result(t_mark0, t_mark1, d0, d1, r0, r1, timed_out)


    cdef void snap0(self) noexcept:
        self.s_recv = self.n_recv
        self.s_brecv = self.b_recv
        self.s_send = self.n_send
        self.s_bsend = self.b_send
        self.s_wait = self.n_wait

    cdef void snap1(self) noexcept:
        self.w_recv = self.n_recv - self.s_recv
        self.w_brecv = self.b_recv - self.s_brecv
        self.w_send = self.n_send - self.s_send
        self.w_bsend = self.b_send - self.s_bsend
        self.w_wait = self.n_wait - self.s_wait

    def run_latency(self, double rate, double duration, double warmup, double drain, mark,
                    double stall=1.0, int sched_fd=-1, double sched_slow_us=200.0,
                    bint sched_self=False):
        """Open loop: every publisher sends one message each 1/``rate`` s, stamped at send.

        Latencies of messages sent within the measured interval are kept
        (``latencies()``, with their send times: ``latency_samples()``). With ``sched_fd``
        (an open /proc/PID/task/TID/schedstat of the broker's thread) that thread's run and
        wait times are read before every tick's sends and after each message slower than
        ``sched_slow_us`` is received (``sched_samples()``): what the broker did meanwhile;
        ``sched_self`` reads the generator thread's own too (diagnosis: twice the reads).
        """
        cdef uint64_t interval = <uint64_t>(1e9 / rate)
        cdef uint64_t t0 = lg_now(), now, expirations = 0, k
        cdef uint64_t t_warm = t0 + <uint64_t>(warmup * 1e9)
        cdef uint64_t t_stop = t_warm + <uint64_t>(duration * 1e9)
        cdef uint64_t t_end = 0, t_mark0 = 0, t_mark1 = 0, d0 = 0, d1 = 0, r0 = 0, r1 = 0
        cdef uint64_t late = 0, idle_ns = <uint64_t>(stall * 1e9)
        cdef int tfd, phase = 0, turns = 0, nev, i, pi
        cdef bint timed_out = False
        cdef itimerspec its
        cdef epoll_event ev
        cdef ssize_t r
        if not self.finalized:
            raise RuntimeError("finalize() first")
        self.lat_cap = <uint64_t>(rate * duration * self.npubs * 1.5) + 1024
        free(self.lat)
        self.lat = <int64_t *>malloc(self.lat_cap * sizeof(int64_t))
        if self.lat == NULL:
            raise MemoryError()
        free(self.lat_ts)
        self.lat_ts = <int64_t *>malloc(self.lat_cap * sizeof(int64_t))
        if self.lat_ts == NULL:
            raise MemoryError()
        self.nlat = 0
        free(self.sched)
        self.sched = NULL
        self.nsched = 0
        self.sched_fd = sched_fd
        self.sched_slow_ns = <uint64_t>(sched_slow_us * 1000)
        if sched_fd >= 0:
            self.sched_cap = <uint64_t>(rate * (warmup + duration + drain + stall + 1) * 2) + 4096
            self.sched = <uint64_t *>malloc(self.sched_cap * 5 * sizeof(uint64_t))
            if self.sched == NULL:
                raise MemoryError()
            if sched_self:
                self.self_fd = open_self_schedstat()
        self.lat_from = t_warm
        self.lat_until = t_stop
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if tfd < 0:
            raise OSError(errno, "timerfd_create")
        try:
            ev.events = EPOLLIN
            ev.data.u64 = 0
            ev.data.u32 = TIMER_TAG
            if epoll_ctl(self.ep, EPOLL_CTL_ADD, tfd, &ev) < 0:
                raise OSError(errno, "epoll_ctl timerfd")
            its.it_interval.tv_sec = interval // 1000000000
            its.it_interval.tv_nsec = interval % 1000000000
            its.it_value.tv_sec = (t0 + interval) // 1000000000
            its.it_value.tv_nsec = (t0 + interval) % 1000000000
            if timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0:
                raise OSError(errno, "timerfd_settime")
            self.last_progress = t0
            while True:
                now = lg_now()
                if phase == 0 and now >= t_warm:
                    phase = 1
                    mark(0)
                    t_mark0 = lg_now()
                    d0 = self.unique_expected
                    r0 = self.delivered
                    self.snap0()
                if phase == 1 and now >= t_stop:
                    phase = 2  # the timer keeps ticking (it bounds the waits); nothing is sent
                    t_mark1 = lg_now()
                    d1 = self.unique_expected
                    r1 = self.delivered
                    self.snap1()
                    mark(1)
                    t_end = lg_now() + <uint64_t>(drain * 1e9)
                    self.last_progress = lg_now()
                if phase == 2:
                    if self.unique_expected >= self.expected_total():
                        break
                    now = lg_now()
                    if now >= t_end or now - self.last_progress > idle_ns:
                        timed_out = True
                        break
                nev = epoll_wait(self.ep, self.events, MAX_EVENTS, -1)
                self.n_wait += 1
                if nev < 0:
                    if errno == EINTR:
                        continue
                    raise OSError(errno, "epoll_wait")
                for i in range(nev):
                    if self.events[i].data.u32 == TIMER_TAG:
                        r = read(tfd, &expirations, 8)
                        if r != 8 or phase == 2:
                            continue
                        if expirations > 1:
                            late += expirations - 1
                        if expirations > 10000:
                            expirations = 10000
                        if self.sched_fd >= 0:
                            self.sched_sample()
                        for k in range(expirations):
                            for pi in range(self.npubs):
                                if self.conns[self.pubs[pi].conn].state != ST_READY:
                                    continue
                                self.emit(pi, 1, lg_now())
                                self.flush(self.pubs[pi].conn)
                # handle the socket events (dispatch skips the timer tag: out of range)
                if nev:
                    self.dispatch(nev, lg_now())
                turns += 1
                if turns & 255 == 0:
                    PyErr_CheckSignals()
        finally:
            epoll_ctl(self.ep, EPOLL_CTL_DEL, tfd, NULL)
            close(tfd)
            self.sched_fd = -1  # the caller's descriptor: not read after this call
            if self.self_fd >= 0:
                close(self.self_fd)
                self.self_fd = -1
        res = self._result(t_mark0, t_mark1, d0, d1, r0, r1, timed_out)
        res["timer_late"] = int(late)
        return res

    cdef dict _result(self, uint64_t t_mark0, uint64_t t_mark1, uint64_t d0, uint64_t d1,
                      uint64_t r0, uint64_t r1, bint timed_out):
        res = self.stats()
        res.update(window_ns=int(t_mark1 - t_mark0), window_unique=int(d1 - d0),
                   window_delivered=int(r1 - r0), drain_timed_out=bool(timed_out),
                   window_recv_calls=int(self.w_recv), window_recv_bytes=int(self.w_brecv),
                   window_send_calls=int(self.w_send), window_send_bytes=int(self.w_bsend),
                   window_polls=int(self.w_wait))
        return res

    def stats(self) -> dict:
        """Counts so far: sent, acked, received, lost, duplicated, reordered, ..."""
        cdef int s, p
        cdef track_t *t
        cdef uint64_t lost = 0, dup = 0, reorder = 0, sent = 0, acked = 0, bad = 0, unique = 0
        cdef uint64_t expected = 0
        for p in range(self.npubs):
            sent += self.pubs[p].sent
            acked += self.pubs[p].acked
            bad += self.pubs[p].puback_bad
        if self.tracks != NULL:
            for s in range(self.nsubs):
                for p in range(self.npubs):
                    t = &self.tracks[s * self.npubs + p]
                    dup += t.dup
                    reorder += t.reorder
                    if t.expected:
                        expected += self.pubs[p].sent
                        unique += t.unique
                        lost += self.pubs[p].sent - t.unique
        return dict(sent=int(sent), acked=int(acked), puback_out_of_order=int(bad),
                    expected=int(expected), received_unique=int(unique),
                    received_total=int(self.delivered), lost=int(lost), duplicated=int(dup),
                    reordered=int(reorder), unexpected=int(self.unexpected),
                    malformed=int(self.malformed), protocol_errors=int(self.proto_errors),
                    connections_lost=int(self.conns_lost), connected=int(self.connected),
                    connect_failed=int(self.connect_failed))

    def latencies(self) -> list:
        """Latencies (ns) of the messages sent in the measured interval of run_latency()."""
        cdef uint64_t i
        return [self.lat[i] for i in range(self.nlat)]

    def latency_samples(self) -> list:
        """(send time, latency) in ns of the messages of ``latencies()``, in arrival order."""
        cdef uint64_t i
        return [(self.lat_ts[i], self.lat[i]) for i in range(self.nlat)]

    def sched_samples(self) -> list:
        """(time, run ns, wait ns, own run ns, own wait ns) of the broker thread (and the
        generator's, 0 without sched_self) read by run_latency(sched_fd=...)."""
        cdef uint64_t i
        return [tuple(self.sched[5 * i + k] for k in range(5)) for i in range(self.nsched)]
