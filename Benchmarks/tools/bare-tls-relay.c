/*
 * The floor for a TLS-terminating relay: an epoll server in C that terminates TLS as edgemux does
 * and then only copies bytes. Same OpenSSL set-up (one session ticket, no session cache), same
 * system calls per relayed message as edgemux at its leanest: one recv(2) per readable event (a
 * short read means drained; the next byte brings a new edge), one send(2) per side per event (TLS
 * records are gathered in a memory BIO and leave together; the session ticket waits for the first
 * response). It picks the backend by ALPN (h2 -> the h2c backend, anything else -> the HTTP/1.1 one)
 * and gives each client connection a backend connection of its own, as edgemux's relay mode does.
 * What it lacks: parsing, routing, a pool, timers, bounds, logs, metrics, the HTTP/2 SETTINGS
 * handling of DESIGN.md (nginx and h2load do not need it). So what it reaches per core is what any
 * relay can reach on this machine with these system calls.
 *
 * It follows the peers harness's routing contract: `run.sh --target relay-floor=PORT` (see
 * side-by-side.sh). Not a server to run for anything else.
 *
 * Build: cc -O2 -o bare-tls-relay bare-tls-relay.c -lssl -lcrypto
 * Usage: bare-tls-relay PORT CERT KEY H1_PORT H2C_PORT SECONDS   (127.0.0.1 only; exits after SECONDS)
 */
#define _GNU_SOURCE
#include "bare-tls-common.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

enum { CHUNK = 16384, GATHER = 65536, HIGH_WATER = 262144 };

typedef struct conn conn_t;
typedef struct { conn_t *conn; int backend; } end_t;  /* what an epoll registration points at */

struct conn {
    int fd, backend_fd, established, closed, client_paused, backend_paused;
    SSL *ssl;
    BIO *from_client, *to_client;   /* memory BIOs: ciphertext in and out */
    BIO *to_backend;                /* plaintext the backend socket has not taken yet */
    end_t client_end, backend_end;
    conn_t *next_closed;
};

static int epfd;
static unsigned short h1_port, h2c_port;
static conn_t *closed_in_batch;  /* freed after the batch: a later event of the batch may point at them */
static char buf[GATHER];

static int select_alpn(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
    (void)s; (void)arg;
    static const unsigned char ours[] = "\x02h2\x08http/1.1";
    unsigned char *chosen;
    if (SSL_select_next_proto(&chosen, outlen, ours, sizeof ours - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;  /* no ALPN in common: HTTP/1.1 */
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

static void close_conn(conn_t *c) {
    if (c->closed) return;
    close(c->fd);  /* closing removes the registrations */
    if (c->backend_fd >= 0) close(c->backend_fd);
    c->closed = 1;
    c->next_closed = closed_in_batch;
    closed_in_batch = c;
}

static void free_closed(void) {
    while (closed_in_batch) {
        conn_t *c = closed_in_batch;
        closed_in_batch = c->next_closed;
        SSL_free(c->ssl);  /* frees both memory BIOs */
        BIO_free(c->to_backend);
        free(c);
    }
}

/* Sends what the memory BIO holds; what the socket does not take stays there. -1: the socket failed. */
static int flush(int fd, BIO *pending) {
    char *bytes;
    long n = BIO_get_mem_data(pending, &bytes);
    if (n == 0) return 0;
    ssize_t sent = send(fd, bytes, n, MSG_NOSIGNAL);
    if (sent < 0) return errno == EAGAIN ? 0 : -1;
    char sink[CHUNK];
    for (long left = sent; left > 0;) left -= BIO_read(pending, sink, left < CHUNK ? (int)left : CHUNK);
    return 0;
}

/* Reads what one edge brought: recv until a short read (drained) or a full buffer.
 * Returns the bytes read, or -1 for end of stream or an error with nothing read. */
static long read_edge(int fd, char *into, long room) {
    long total = 0;
    while (total < room) {
        long want = room - total;
        ssize_t n = recv(fd, into + total, want, 0);
        if (n < 0) return errno == EAGAIN || total ? total : -1;
        if (n == 0) return total ? total : -1;
        total += n;
        if (n < want) break;
    }
    return total;
}

static int connect_backend(conn_t *c) {
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    int h2 = alpn_len == 2 && memcmp(alpn, "h2", 2) == 0, one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(h2 ? h2c_port : h1_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    c->backend_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->backend_fd < 0) return -1;
    setsockopt(c->backend_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->backend_fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) return -1;
    struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &c->backend_end };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, c->backend_fd, &e);
}

/* Client bytes arrived: decrypt what they complete, pass the plaintext on in one send. Reading
 * stops above the high-water mark with bytes maybe left in the socket (paused: no new edge will
 * come for them), and goes on once the backend has taken enough. */
static int from_client(conn_t *c) {
    for (;;) {
        long n = sizeof buf;
        while (n == sizeof buf && BIO_ctrl_pending(c->to_backend) <= HIGH_WATER) {
            n = read_edge(c->fd, buf, sizeof buf);
            if (n < 0) return -1;
            BIO_write(c->from_client, buf, (int)n);
            if (!c->established) {
                int r = SSL_accept(c->ssl);
                if (r != 1) {
                    if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) return -1;
                    return flush(c->fd, c->to_client);  /* the server's handshake flight */
                }
                c->established = 1;  /* the ticket stays in to_client and leaves with the first response */
                if (connect_backend(c) != 0) return -1;
            }
            int r;
            while ((r = SSL_read(c->ssl, buf, sizeof buf)) > 0) BIO_write(c->to_backend, buf, r);
            if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) return -1;  /* close_notify or a TLS error */
        }
        c->client_paused = n == sizeof buf;
        if (flush(c->backend_fd, c->to_backend) < 0) return -1;
        if (!c->client_paused || BIO_ctrl_pending(c->to_backend) > HIGH_WATER) return 0;
    }
}

/* Backend bytes arrived: encrypt them, send the records in one go; paused as from_client is. */
static int from_backend(conn_t *c) {
    for (;;) {
        long n = sizeof buf;
        while (n == sizeof buf && BIO_ctrl_pending(c->to_client) <= HIGH_WATER) {
            n = read_edge(c->backend_fd, buf, sizeof buf);
            if (n < 0) {
                SSL_shutdown(c->ssl);
                flush(c->fd, c->to_client);
                return -1;
            }
            if (n > 0 && SSL_write(c->ssl, buf, (int)n) <= 0) return -1;
        }
        c->backend_paused = n == sizeof buf;
        if (flush(c->fd, c->to_client) < 0) return -1;
        if (!c->backend_paused || BIO_ctrl_pending(c->to_client) > HIGH_WATER) return 0;
    }
}

/* An event on the backend socket: it connected, took more, or has bytes. */
static int backend_event(conn_t *c) {
    if (flush(c->backend_fd, c->to_backend) < 0) return -1;
    if (c->client_paused && BIO_ctrl_pending(c->to_backend) <= HIGH_WATER && from_client(c) < 0) return -1;
    return from_backend(c);
}

/* An event on the client socket: it took more, or has bytes. */
static int client_event(conn_t *c, unsigned events) {
    if (flush(c->fd, c->to_client) < 0) return -1;
    if (c->backend_paused && BIO_ctrl_pending(c->to_client) <= HIGH_WATER && from_backend(c) < 0) return -1;
    return events & EPOLLIN ? from_client(c) : 0;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s PORT CERT KEY H1_PORT H2C_PORT SECONDS\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    alarm(atoi(argv[6]));  /* bounded: never outlives a benchmark */
    h1_port = atoi(argv[4]);
    h2c_port = atoi(argv[5]);
    SSL_CTX *ctx = floor_server_ctx(argv[2], argv[3]);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    int l;
    epfd = floor_listen(argv[1], &l);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        for (int i = 0; i < n; i++) {
            end_t *end = events[i].data.ptr;
            if (end == NULL) {
                int fd;
                while ((fd = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    conn_t *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->backend_fd = -1;
                    c->client_end = (end_t){ c, 0 };
                    c->backend_end = (end_t){ c, 1 };
                    c->ssl = SSL_new(ctx);
                    c->from_client = BIO_new(BIO_s_mem());
                    c->to_client = BIO_new(BIO_s_mem());
                    c->to_backend = BIO_new(BIO_s_mem());
                    SSL_set_bio(c->ssl, c->from_client, c->to_client);
                    SSL_set_accept_state(c->ssl);
                    struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &c->client_end };
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            conn_t *c = end->conn;
            if (c->closed) continue;
            if ((end->backend ? backend_event(c) : client_event(c, events[i].events)) < 0) close_conn(c);
        }
        free_closed();
    }
}
