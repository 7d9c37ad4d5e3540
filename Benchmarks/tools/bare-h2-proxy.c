/*
 * The floor for request mode over HTTP/2: an epoll server in C that terminates TLS as edgemux
 * does (the OpenSSL set-up of bare-tls-common.h, ciphertext through memory BIOs, one send per
 * side per event), runs an nghttp2 server session per client connection and an nghttp2 client
 * session per client connection to the h2c backend, and passes each request's header block and
 * each response (head, DATA, end) from one session to the other. The same nghttp2 work per request
 * as edgemux's request mode, and nothing else: no routing, no translation, no forwarding fields,
 * no shared backend sessions, no bounds (a response body is buffered whole), no timers, logs or
 * metrics. Requests with a body are not supported (h2load's GETs have none). So what it reaches
 * per core is what a proxy built on nghttp2's session API for both hops can reach on this machine.
 *
 * With the last argument `h1` it is the floor of HTTP/2 -> HTTP/1.1 translation instead: the same
 * server session, and each request goes to an HTTP/1.1 backend connection of its own taken from
 * one process-wide keep-alive pool (LIFO; a new connection when none is idle), written as one
 * request head (pseudo-headers to the request line and Host, the rest copied), its response head
 * parsed just enough (status, fields, Content-Length: a response without one, or a chunked one,
 * is not supported, as nginx's static /small and /big always carry one) and its body passed on.
 *
 * HTTP/2 only: with ALPN http/1.1 it closes the connection (the harness's HTTP/1.1 rows are ERR for
 * it). Run by side-by-side.sh as `--target h2-floor=PORT`. Not a server to run for anything else.
 *
 * Build: cc -O2 -o bare-h2-proxy bare-h2-proxy.c -lssl -lcrypto -lnghttp2
 * Usage: bare-h2-proxy PORT CERT KEY BACKEND_PORT SECONDS [h2c|h1]   (127.0.0.1 only; exits after SECONDS)
 */
#define _GNU_SOURCE
#include "bare-tls-common.h"
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <strings.h>
#include <string.h>
#include <unistd.h>

enum { GATHER = 65536, HBUF = 4096, MAXNV = 48 };

typedef struct conn conn_t;
/* What an epoll event is for: the client socket, the h2c backend socket of a client connection,
   or an HTTP/1.1 backend connection (h1_t, whose first member is its end_t). */
enum { END_CLIENT, END_H2C, END_H1 };
typedef struct { conn_t *conn; int kind; } end_t;
typedef struct h1 h1_t;

typedef struct stream {
    int32_t client_id;
    char req_buf[HBUF]; size_t req_len; nghttp2_nv req_nv[MAXNV]; size_t req_n;
    char resp_buf[HBUF]; size_t resp_len; nghttp2_nv resp_nv[MAXNV]; size_t resp_n;
    uint8_t *body; size_t body_len, body_off, body_cap;
    int body_ended, client_closed, backend_closed;
    h1_t *h1;  /* h1 mode: the backend connection carrying this request */
} stream_t;

/* h1 mode: one HTTP/1.1 backend connection, idle in the pool or carrying one request. */
struct h1 {
    end_t end;
    int fd, connected, dead;
    stream_t *st;
    char out[HBUF]; size_t out_len, out_off;  /* the request head not yet sent */
    char in[HBUF]; size_t in_len;             /* the response head until its end */
    int head_done; long left;                 /* body bytes still to come */
    h1_t *next_idle, *next_busy, *prev_busy;
};

struct conn {
    int fd, backend_fd, established, backend_up, closed;
    SSL *ssl;
    BIO *from_client, *to_client;
    nghttp2_session *server, *client;
    uint8_t *backend_pending; size_t pending_len;  /* bytes the backend socket has not taken */
    end_t client_end, backend_end;
    h1_t *busy;  /* h1 mode: the backend connections carrying this connection's requests */
    conn_t *next_closed;
};

static int epfd;
static unsigned short h2c_port;
static int h1_mode;
static h1_t *h1_idle, *h1_dead;
static conn_t *closed_in_batch;
static char buf[GATHER];

static int select_alpn(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
    (void)s; (void)arg;
    static const unsigned char ours[] = "\x02h2";
    unsigned char *chosen;
    if (SSL_select_next_proto(&chosen, outlen, ours, sizeof ours - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED) return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

static void close_conn(conn_t *c) {
    if (c->closed) return;
    close(c->fd);
    if (c->backend_fd >= 0) close(c->backend_fd);
    c->closed = 1;
    c->next_closed = closed_in_batch;
    closed_in_batch = c;
}

static void h1_close(h1_t *b);

static void free_conn(conn_t *c) {
    while (c->busy) {  /* requests still at HTTP/1.1 backends: those connections cannot be reused */
        h1_t *b = c->busy;
        c->busy = b->next_busy;
        h1_close(b);
    }
    if (c->server) nghttp2_session_del(c->server);  /* streams are freed by their close callbacks */
    if (c->client) nghttp2_session_del(c->client);
    SSL_free(c->ssl);
    free(c->backend_pending);
    free(c);
}

static void maybe_free_stream(stream_t *s) {
    if (s->client_closed && s->backend_closed) { free(s->body); free(s); }
}

/* ciphertext out to the client, in one send */
static int flush_client(conn_t *c) {
    char *p;
    long n = BIO_get_mem_data(c->to_client, &p);
    if (n <= 0) return 0;
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0) return errno == EAGAIN ? 0 : -1;
    char tmp[GATHER];
    for (ssize_t left = w; left > 0;) {
        int k = BIO_read(c->to_client, tmp, left < (ssize_t)sizeof tmp ? (int)left : (int)sizeof tmp);
        if (k <= 0) break;
        left -= k;
    }
    return 0;
}

static int flush(conn_t *c) {
    const uint8_t *data;
    ssize_t n;
    if (!c->established) return flush_client(c);  /* no sessions before the handshake */
    while ((n = nghttp2_session_mem_send(c->server, &data)) > 0) SSL_write(c->ssl, data, n);
    if (n < 0) return -1;
    if (flush_client(c) < 0) return -1;
    if (!c->backend_up || !c->client) return 0;
    while ((n = nghttp2_session_mem_send(c->client, &data)) > 0) {
        c->backend_pending = realloc(c->backend_pending, c->pending_len + n);
        memcpy(c->backend_pending + c->pending_len, data, n);
        c->pending_len += n;
    }
    if (n < 0) return -1;
    if (c->pending_len) {
        ssize_t w = send(c->backend_fd, c->backend_pending, c->pending_len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) return -1;
        if (w > 0) { memmove(c->backend_pending, c->backend_pending + w, c->pending_len - w); c->pending_len -= w; }
    }
    return 0;
}

/* ---- h1 mode: HTTP/1.1 backend connections ---- */

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *out, size_t len, uint32_t *flags, nghttp2_data_source *src, void *u);
static void add_nv(char *b, size_t *len, nghttp2_nv *nv, size_t *n, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl);

/* Freed after the event batch: a later event of the same batch may still name it. */
static void h1_close(h1_t *b) {
    close(b->fd);
    b->dead = 1;
    b->next_idle = h1_dead;
    h1_dead = b;
}

/* The request is over for this connection (answered, failed or abandoned). */
static void h1_unbusy(h1_t *b) {
    conn_t *c = b->end.conn;
    if (b->prev_busy) b->prev_busy->next_busy = b->next_busy; else c->busy = b->next_busy;
    if (b->next_busy) b->next_busy->prev_busy = b->prev_busy;
    b->next_busy = b->prev_busy = NULL;
    b->st->h1 = NULL;
    b->st->backend_closed = 1;
    b->st = NULL;
    b->end.conn = NULL;
}

/* The client gave up on the request: the connection cannot be reused. */
static void h1_abandon(h1_t *b) {
    h1_unbusy(b);
    h1_close(b);
}

static int h1_write(h1_t *b) {
    while (b->out_off < b->out_len) {
        ssize_t w = send(b->fd, b->out + b->out_off, b->out_len - b->out_off, MSG_NOSIGNAL);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        b->out_off += w;
    }
    return 0;
}

static void h1_put(h1_t *b, const void *p, size_t n) {
    if (b->out_len + n <= sizeof b->out) { memcpy(b->out + b->out_len, p, n); b->out_len += n; }
}

static int h1_send_request(conn_t *c, stream_t *st) {
    h1_t *b = h1_idle;
    if (b) {
        h1_idle = b->next_idle;
    } else {
        b = calloc(1, sizeof *b);
        b->end = (end_t){ NULL, END_H1 };
        b->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(b->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(h2c_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (connect(b->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) { h1_close(b); return -1; }
        struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &b->end };
        epoll_ctl(epfd, EPOLL_CTL_ADD, b->fd, &e);
    }
    b->end.conn = c;
    b->st = st;
    st->h1 = b;
    b->prev_busy = NULL;
    b->next_busy = c->busy;
    if (c->busy) c->busy->prev_busy = b;
    c->busy = b;
    b->out_len = b->out_off = b->in_len = 0;
    b->head_done = 0;
    b->left = 0;
    const nghttp2_nv *method = NULL, *path = NULL, *authority = NULL;
    for (size_t i = 0; i < st->req_n; i++) {
        const nghttp2_nv *nv = &st->req_nv[i];
        if (nv->namelen == 7 && !memcmp(nv->name, ":method", 7)) method = nv;
        else if (nv->namelen == 5 && !memcmp(nv->name, ":path", 5)) path = nv;
        else if (nv->namelen == 10 && !memcmp(nv->name, ":authority", 10)) authority = nv;
    }
    if (!method || !path) return -1;
    h1_put(b, method->value, method->valuelen);
    h1_put(b, " ", 1);
    h1_put(b, path->value, path->valuelen);
    h1_put(b, " HTTP/1.1\r\n", 11);
    if (authority) { h1_put(b, "Host: ", 6); h1_put(b, authority->value, authority->valuelen); h1_put(b, "\r\n", 2); }
    for (size_t i = 0; i < st->req_n; i++) {
        const nghttp2_nv *nv = &st->req_nv[i];
        if (nv->namelen && nv->name[0] == ':') continue;
        h1_put(b, nv->name, nv->namelen);
        h1_put(b, ": ", 2);
        h1_put(b, nv->value, nv->valuelen);
        h1_put(b, "\r\n", 2);
    }
    h1_put(b, "\r\n", 2);
    return b->connected ? h1_write(b) : 0;
}

/* The response head: status line and fields into the stream's response list (names lowercased,
   connection-specific fields dropped), Content-Length kept for the body. */
static int h1_parse_head(h1_t *b, size_t head_len) {
    stream_t *st = b->st;
    char *p = b->in, *end = b->in + head_len;
    char *eol = memchr(p, '\n', end - p);
    if (!eol || eol - p < 12) return -1;
    add_nv(st->resp_buf, &st->resp_len, st->resp_nv, &st->resp_n, (const uint8_t *)":status", 7, (const uint8_t *)p + 9, 3);
    b->left = -1;
    for (p = eol + 1; p < end - 2; p = eol + 1) {
        eol = memchr(p, '\n', end - p);
        char *colon = memchr(p, ':', eol - p);
        if (!colon) return -1;
        size_t nl = colon - p;
        char *v = colon + 1;
        while (*v == ' ') v++;
        size_t vl = (eol - v) - (eol[-1] == '\r');
        for (size_t i = 0; i < nl; i++) p[i] = (p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i];
        if (nl == 14 && !memcmp(p, "content-length", 14)) b->left = atol(v);
        if ((nl == 10 && !memcmp(p, "connection", 10)) || (nl == 10 && !memcmp(p, "keep-alive", 10)) ||
            (nl == 17 && !memcmp(p, "transfer-encoding", 17))) continue;
        add_nv(st->resp_buf, &st->resp_len, st->resp_nv, &st->resp_n, (const uint8_t *)p, nl, (const uint8_t *)v, vl);
    }
    return b->left < 0 ? -1 : 0;
}

static void h1_body(h1_t *b, const char *data, size_t len) {
    stream_t *st = b->st;
    if (st->body_len + len > st->body_cap) {
        st->body_cap = (st->body_len + len) * 2;
        st->body = realloc(st->body, st->body_cap);
    }
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    b->left -= len;
}

/* The response is complete: the stream ends and the connection goes back to the pool. */
static void h1_done(h1_t *b, int resume) {
    stream_t *st = b->st;
    conn_t *c = b->end.conn;
    st->body_ended = 1;
    if (resume) nghttp2_session_resume_data(c->server, st->client_id);
    h1_unbusy(b);
    b->next_idle = h1_idle;
    h1_idle = b;
    maybe_free_stream(st);
}

static void h1_fail(h1_t *b) {
    stream_t *st = b->st;
    if (st) {
        conn_t *c = b->end.conn;
        if (!st->client_closed) nghttp2_submit_rst_stream(c->server, NGHTTP2_FLAG_NONE, st->client_id, NGHTTP2_INTERNAL_ERROR);
        h1_unbusy(b);
        maybe_free_stream(st);
    } else {  /* idle in the pool: take it out */
        for (h1_t **q = &h1_idle; *q; q = &(*q)->next_idle) if (*q == b) { *q = b->next_idle; break; }
    }
    h1_close(b);
}

static int flush(conn_t *c);

static void on_h1(h1_t *b, uint32_t events) {
    conn_t *c = b->end.conn;
    if (!b->connected) {
        if (!(events & EPOLLOUT)) return;
        int err = 0; socklen_t el = sizeof err;
        getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { h1_fail(b); if (c) flush(c); return; }
        b->connected = 1;
    }
    if (b->st && h1_write(b) < 0) { h1_fail(b); flush(c); return; }
    if (!(events & EPOLLIN)) return;
    for (;;) {
        ssize_t n = recv(b->fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) { h1_fail(b); if (c) flush(c); return; }
        if (n < 0) break;
        if (!b->st) continue;  /* bytes on an idle connection: dropped */
        const char *data = buf;
        size_t len = n;
        if (!b->head_done) {
            size_t take = len < sizeof b->in - b->in_len ? len : sizeof b->in - b->in_len;
            memcpy(b->in + b->in_len, data, take);
            size_t before = b->in_len;
            b->in_len += take;
            char *e = memmem(b->in, b->in_len, "\r\n\r\n", 4);
            if (!e) { if (b->in_len == sizeof b->in) { h1_fail(b); flush(c); return; } continue; }
            size_t head_len = e + 4 - b->in;
            if (h1_parse_head(b, head_len) < 0) { h1_fail(b); flush(c); return; }
            b->head_done = 1;
            stream_t *st = b->st;
            nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_body };
            st->body_ended = 0;
            nghttp2_submit_response(c->server, st->client_id, st->resp_nv, st->resp_n, b->left ? &prd : NULL);
            data += head_len - before;
            len -= head_len - before;
            if (b->left == 0) { h1_done(b, 0); break; }
        }
        if (len) {
            h1_body(b, data, len);
            if (b->left <= 0) { h1_done(b, 1); break; }
            nghttp2_session_resume_data(c->server, b->st->client_id);
        }
        if (n < (ssize_t)sizeof buf) break;
    }
    if (c) flush(c);
}

/* ---- the client side: nghttp2 server session ---- */

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *out, size_t len, uint32_t *flags, nghttp2_data_source *src, void *u) {
    (void)s; (void)id; (void)u;
    stream_t *st = src->ptr;
    size_t have = st->body_len - st->body_off;
    if (have == 0) {
        if (st->body_ended) { *flags |= NGHTTP2_DATA_FLAG_EOF; return 0; }
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = have < len ? have : len;
    memcpy(out, st->body + st->body_off, n);
    st->body_off += n;
    if (st->body_off == st->body_len) st->body_off = st->body_len = 0;
    if (st->body_ended && st->body_len == 0) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return n;
}

static int srv_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    (void)u;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    stream_t *st = calloc(1, sizeof *st);
    st->client_id = f->hd.stream_id;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
    return 0;
}

static void add_nv(char *b, size_t *len, nghttp2_nv *nv, size_t *n, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl) {
    if (*n >= MAXNV || *len + nl + vl > HBUF) return;
    memcpy(b + *len, name, nl);
    memcpy(b + *len + nl, value, vl);
    nv[*n] = (nghttp2_nv){ (uint8_t *)b + *len, (uint8_t *)b + *len + nl, nl, vl, NGHTTP2_NV_FLAG_NONE };
    *len += nl + vl;
    (*n)++;
}

static int srv_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *u) {
    (void)flags; (void)u;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st) add_nv(st->req_buf, &st->req_len, st->req_nv, &st->req_n, name, nl, value, vl);
    return 0;
}

static int srv_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    conn_t *c = u;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st) return 0;
    if (h1_mode) {
        if (h1_send_request(c, st) < 0) { st->backend_closed = 1; nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_INTERNAL_ERROR); }
        return 0;
    }
    int32_t id = nghttp2_submit_request(c->client, NULL, st->req_nv, st->req_n, NULL, st);
    if (id < 0) { st->backend_closed = 1; nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_INTERNAL_ERROR); }
    return 0;
}

static int srv_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *u) {
    (void)code; (void)u;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (st) {
        st->client_closed = 1;
        if (st->h1 && !st->backend_closed) h1_abandon(st->h1);  /* cancelled mid-response */
        maybe_free_stream(st);
    }
    return 0;
}

/* ---- the backend side: nghttp2 client session ---- */

static int cli_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *u) { (void)s; (void)f; (void)u; return 0; }

static int cli_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *u) {
    (void)flags; (void)u;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st) add_nv(st->resp_buf, &st->resp_len, st->resp_nv, &st->resp_n, name, nl, value, vl);
    return 0;
}

static int cli_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    conn_t *c = u;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || st->client_closed) return 0;
    int end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_RESPONSE) {
        nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_body };
        st->body_ended = end;
        nghttp2_submit_response(c->server, st->client_id, st->resp_nv, st->resp_n, end ? NULL : &prd);
    } else if (end) {
        st->body_ended = 1;
        nghttp2_session_resume_data(c->server, st->client_id);
    }
    return 0;
}

static int cli_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *u) {
    (void)flags;
    conn_t *c = u;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->client_closed) return 0;
    if (st->body_len + len > st->body_cap) {
        st->body_cap = (st->body_len + len) * 2;
        st->body = realloc(st->body, st->body_cap);
    }
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    nghttp2_session_resume_data(c->server, st->client_id);
    return 0;
}

static int cli_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *u) {
    conn_t *c = u;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st) return 0;
    if (code != 0 && !st->client_closed) nghttp2_submit_rst_stream(c->server, NGHTTP2_FLAG_NONE, st->client_id, code);
    st->backend_closed = 1;
    maybe_free_stream(st);
    return 0;
}

static nghttp2_session_callbacks *server_cbs, *client_cbs;

static int start_sessions(conn_t *c) {
    nghttp2_session_server_new(&c->server, server_cbs, c);
    nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 256 } };
    nghttp2_submit_settings(c->server, NGHTTP2_FLAG_NONE, iv, 1);
    if (h1_mode) return 0;
    nghttp2_session_client_new(&c->client, client_cbs, c);
    nghttp2_submit_settings(c->client, NGHTTP2_FLAG_NONE, NULL, 0);
    return 0;
}

static int on_client(conn_t *c) {
    ssize_t n;
    do {  /* until a short read: the socket is drained (edge-triggered) */
        n = recv(c->fd, buf, sizeof buf, 0);
        if (n == 0) return -1;
        if (n < 0) { if (errno != EAGAIN) return -1; break; }
        BIO_write(c->from_client, buf, n);
    } while (n == (ssize_t)sizeof buf);
    if (!c->established) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            if (SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ) return flush_client(c);
            return -1;
        }
        const unsigned char *alpn; unsigned alen;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
        if (alen != 2) return -1;  /* HTTP/2 only */
        c->established = 1;
        start_sessions(c);
    }
    int r;
    while ((r = SSL_read(c->ssl, buf, sizeof buf)) > 0) {
        if (nghttp2_session_mem_recv(c->server, (uint8_t *)buf, r) < 0) return -1;
    }
    if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) return -1;
    return flush(c);
}

static int on_backend(conn_t *c, uint32_t events) {
    if (!c->backend_up) {
        if (!(events & EPOLLOUT)) return 0;
        int err = 0; socklen_t el = sizeof err;
        getsockopt(c->backend_fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) return -1;
        c->backend_up = 1;
    }
    if (events & EPOLLIN) {
        ssize_t n;
        do {
            n = recv(c->backend_fd, buf, sizeof buf, 0);
            if (n == 0) return -1;
            if (n < 0) { if (errno != EAGAIN) return -1; break; }
            if (c->client && nghttp2_session_mem_recv(c->client, (uint8_t *)buf, n) < 0) return -1;
        } while (n == (ssize_t)sizeof buf);
    }
    return c->established ? flush(c) : 0;
}

static void make_callbacks(void) {
    nghttp2_session_callbacks_new(&server_cbs);
    nghttp2_session_callbacks_set_on_begin_headers_callback(server_cbs, srv_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(server_cbs, srv_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(server_cbs, srv_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(server_cbs, srv_stream_close);
    nghttp2_session_callbacks_new(&client_cbs);
    nghttp2_session_callbacks_set_on_begin_headers_callback(client_cbs, cli_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(client_cbs, cli_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(client_cbs, cli_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(client_cbs, cli_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(client_cbs, cli_stream_close);
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) { fprintf(stderr, "usage: %s PORT CERT KEY BACKEND_PORT SECONDS [h2c|h1]\n", argv[0]); return 2; }
    h1_mode = argc == 7 && !strcmp(argv[6], "h1");
    signal(SIGPIPE, SIG_IGN);
    alarm(atoi(argv[5]));  /* bounded: it exits by itself */
    h2c_port = atoi(argv[4]);
    SSL_CTX *ctx = floor_server_ctx(argv[2], argv[3]);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    make_callbacks();
    int listener;
    epfd = floor_listen(argv[1], &listener);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        for (int i = 0; i < n; i++) {
            end_t *end = events[i].data.ptr;
            if (!end) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    conn_t *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->ssl = SSL_new(ctx);
                    c->from_client = BIO_new(BIO_s_mem());
                    c->to_client = BIO_new(BIO_s_mem());
                    SSL_set_bio(c->ssl, c->from_client, c->to_client);
                    SSL_set_accept_state(c->ssl);
                    c->client_end = (end_t){ c, END_CLIENT };
                    c->backend_end = (end_t){ c, END_H2C };
                    struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &c->client_end };
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
                    c->backend_fd = -1;
                    if (h1_mode) continue;  /* backend connections come from the pool, per request */
                    c->backend_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
                    int one = 1;
                    setsockopt(c->backend_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(h2c_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                    connect(c->backend_fd, (struct sockaddr *)&a, sizeof a);
                    struct epoll_event b = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &c->backend_end };
                    epoll_ctl(epfd, EPOLL_CTL_ADD, c->backend_fd, &b);
                }
                continue;
            }
            if (end->kind == END_H1) {
                h1_t *b = (h1_t *)end;
                if (b->dead || (b->end.conn && b->end.conn->closed)) continue;  /* closed with it at the end of the batch */
                on_h1(b, events[i].events);
                continue;
            }
            conn_t *c = end->conn;
            if (c->closed) continue;
            int rv = end->kind == END_H2C ? on_backend(c, events[i].events) : ((events[i].events & EPOLLIN) ? on_client(c) : flush(c));
            if (rv < 0) close_conn(c);
        }
        while (closed_in_batch) {
            conn_t *c = closed_in_batch;
            closed_in_batch = c->next_closed;
            free_conn(c);
        }
        while (h1_dead) {
            h1_t *b = h1_dead;
            h1_dead = b->next_idle;
            free(b);
        }
    }
}
