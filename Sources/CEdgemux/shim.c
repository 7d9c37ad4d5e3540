// _GNU_SOURCE lives here and only here (see CEdgemux.h).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <sys/mman.h>
#include <malloc.h>
#include <time.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include "CEdgemux.h"

int CEdgemux_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    return accept4(fd, addr, len, flags);
}

int CEdgemux_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

ssize_t CEdgemux_splice(int fd_in, int fd_out, size_t len, unsigned int flags) {
    return splice(fd_in, NULL, fd_out, NULL, len, flags);
}

unsigned int CEdgemux_splice_relay_flags(void) { return SPLICE_F_MOVE | SPLICE_F_NONBLOCK; }

int CEdgemux_errno(void) { return errno; }

long CEdgemux_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }

long CEdgemux_SSL_CTX_set_options(SSL_CTX *ctx, uint64_t options) {
    return (long)SSL_CTX_set_options(ctx, options);
}

int CEdgemux_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

int CEdgemux_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}

long CEdgemux_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}

void CEdgemux_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes) { SSL_CTX_set_read_ahead(ctx, yes); }

// Session ticket keys: a list, the first encrypts, all decrypt (nginx's ssl_session_ticket_key
// order), so replicas behind one balancer resume each other's sessions while a new key is rolled
// out. OpenSSL's own SSL_CTX_set_tlsext_ticket_keys holds one key only. Each key is 80 bytes as
// nginx's and HAProxy's files: name (16), HMAC-SHA256 secret (32), AES-256-CBC key (32).
typedef struct {
    int count;
    unsigned char keys[];  // count * 80
} edgemux_ticket_keys;

static int ticket_keys_index = -1;
static pthread_once_t ticket_keys_once = PTHREAD_ONCE_INIT;

static void ticket_keys_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    if (ptr) {
        edgemux_ticket_keys *k = ptr;
        OPENSSL_cleanse(k->keys, (size_t)k->count * 80);
        free(k);
    }
}

static void ticket_keys_index_init(void) {
    ticket_keys_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ticket_keys_free);
}

static int ticket_key_mac(EVP_MAC_CTX *hctx, const unsigned char *key) {
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)(key + 16), 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

static int ticket_key_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc) {
    edgemux_ticket_keys *k = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticket_keys_index);
    if (!k || k->count == 0) return enc ? -1 : 0;
    if (enc) {
        const unsigned char *key = k->keys;
        memcpy(key_name, key, 16);
        if (RAND_bytes(iv, 16) <= 0) return -1;
        if (!EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key + 48, iv)) return -1;
        if (!ticket_key_mac(hctx, key)) return -1;
        return 1;
    }
    for (int i = 0; i < k->count; i++) {
        const unsigned char *key = k->keys + (size_t)i * 80;
        if (memcmp(key_name, key, 16) != 0) continue;
        if (!ticket_key_mac(hctx, key)) return -1;
        if (!EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key + 48, iv)) return -1;
        // Not the current key: the session resumes and the client gets a new ticket under it.
        return i == 0 ? 1 : 2;
    }
    return 0;  // unknown key (rotated out, another cluster's): a full handshake
}

int CEdgemux_SSL_CTX_set_ticket_keys(SSL_CTX *ctx, const unsigned char *keys, int count) {
    pthread_once(&ticket_keys_once, ticket_keys_index_init);
    if (ticket_keys_index < 0 || count <= 0) return 0;
    edgemux_ticket_keys *k = malloc(sizeof(edgemux_ticket_keys) + (size_t)count * 80);
    if (!k) return 0;
    k->count = count;
    memcpy(k->keys, keys, (size_t)count * 80);
    if (!SSL_CTX_set_ex_data(ctx, ticket_keys_index, k)) {
        free(k);
        return 0;
    }
    return (int)SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb);
}

int CEdgemux_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

int CEdgemux_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}

long CEdgemux_default_modes(void) {
    return SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS;
}

uint64_t CEdgemux_default_server_options(void) {
    return SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION |
           SSL_OP_CIPHER_SERVER_PREFERENCE;
}

int CEdgemux_TLS1_2_VERSION(void) { return TLS1_2_VERSION; }
int CEdgemux_TLS1_3_VERSION(void) { return TLS1_3_VERSION; }

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    const CEdgemux_alpn_list *list = arg;
    unsigned char *selected = NULL;
    unsigned char selected_len = 0;
    if (SSL_select_next_proto(&selected, &selected_len, list->wire, list->len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        // RFC 7301 section 3.2: no protocol in common is a fatal no_application_protocol alert.
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    *out = selected;
    *outlen = selected_len;
    return SSL_TLSEXT_ERR_OK;
}

void CEdgemux_SSL_CTX_set_alpn_server_protocols(SSL_CTX *ctx, CEdgemux_alpn_list *list) {
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, list);
}

static int sni_select(SSL *ssl, int *alert, void *arg) {
    (void)alert;
    const CEdgemux_sni_table *table = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || table == NULL) return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < table->count; i++) {
        X509 *leaf = SSL_CTX_get0_certificate(table->ctxs[i]);
        if (leaf != NULL && X509_check_host(leaf, name, 0, 0, NULL) == 1) {
            if (i > 0) SSL_set_SSL_CTX(ssl, table->ctxs[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

void CEdgemux_SSL_CTX_set_sni_table(SSL_CTX *ctx, CEdgemux_sni_table *table) {
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_select);
    SSL_CTX_set_tlsext_servername_arg(ctx, table);
}

void CEdgemux_ERR_text(char *out, size_t cap) {
    if (cap == 0) return;
    out[0] = 0;
    unsigned long code = ERR_get_error();
    if (code != 0) ERR_error_string_n(code, out, cap);
    ERR_clear_error();
}

int CEdgemux_ERR_peek_plain_http(void) {
    unsigned long e = ERR_peek_error();
    if (e == 0 || ERR_GET_LIB(e) != ERR_LIB_SSL) return 0;
    int reason = ERR_GET_REASON(e);
    return reason == SSL_R_HTTP_REQUEST || reason == SSL_R_HTTPS_PROXY_REQUEST;
}

void CEdgemux_ERR_clear(void) {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

int CEdgemux_SSL_CTX_check_private_key(const SSL_CTX *ctx) { return SSL_CTX_check_private_key(ctx); }

int CEdgemux_make_self_signed(const char *cn, int days, const char *cert_path, const char *key_path) {
    int ok = 0;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    FILE *cf = NULL, *kf = NULL;
    if (key == NULL || cert == NULL) goto done;
    X509_set_version(cert, 2);
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof serial) != 1) goto done;
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400L);
    X509_set_pubkey(cert, key);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(cert, name);
    char san[512];
    snprintf(san, sizeof san, "DNS:%s,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1", cn);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (ext == NULL) goto done;
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
    if (ext != NULL) { X509_add_ext(cert, ext, -1); X509_EXTENSION_free(ext); }
    if (X509_sign(cert, key, EVP_sha256()) == 0) goto done;
    cf = fopen(cert_path, "w");
    kf = fopen(key_path, "w");
    if (cf == NULL || kf == NULL) goto done;
    fchmod(fileno(kf), 0600);
    if (PEM_write_X509(cf, cert) != 1) goto done;
    if (PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL) != 1) goto done;
    ok = 1;
done:
    if (cf) fclose(cf);
    if (kf) fclose(kf);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ok;
}

int CEdgemux_SSL_set_peer_name(SSL *ssl, const char *name, int verify) {
    unsigned char buf[16];
    int is_ip = inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
    if (!is_ip && SSL_set_tlsext_host_name(ssl, name) != 1) return 0;
    if (!verify) return 1;
    if (is_ip) return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
    return SSL_set1_host(ssl, name);
}

// MARK: - socket BIO

// Four full TLS records (16 KiB of plaintext plus header and tag each) fit.
#define EDGEMUX_GATHER_CAP (4 * (16384 + 256))

typedef struct {
    int fd;
    int drained;
    // An EPOLLIN edge came since the read that drained the socket. Until one does, a read is
    // answered "retry" without a recv(2) that could only say EAGAIN (edge-triggered epoll raises
    // a new edge for every arrival, and edgemux notes it here before calling OpenSSL again).
    int edge;
    // The peer's FIN (or an error) was signalled. It may have come with the last bytes, in the
    // same edge as they did, and raises no edge of its own afterwards: so from then on every
    // read asks the socket, which answers the EOF.
    int hangup;
    int corked;
    int owned;              // `gather` is this connection's own allocation (else the thread's)
    unsigned char *gather;  // set only while it holds bytes
    size_t gathered;
    size_t sent;            // bytes of `gather` already sent
} edgemux_sock;

static BIO_METHOD *edgemux_sock_method;
static pthread_once_t edgemux_sock_once = PTHREAD_ONCE_INIT;

// A burst is gathered into the thread's buffer and sent at once when uncorked; a connection
// owns memory only for what its socket could not take (a copy of the remainder). So a relay in
// steady state allocates nothing per chunk, and an idle connection holds no gather buffer. Only
// one connection per thread gathers at a time: corking spans one write burst.
static __thread unsigned char *edgemux_gather_scratch;

static void sock_drop_gather(edgemux_sock *st) {
    if (st->owned) free(st->gather);
    st->gather = NULL;
    st->owned = 0;
    st->gathered = st->sent = 0;
}

static int sock_read(BIO *b, char *buf, int len) {
    edgemux_sock *st = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (st->drained && !st->edge && !st->hangup) {
        BIO_set_retry_read(b);
        return -1;
    }
    st->edge = 0;
    ssize_t n;
    do {
        n = recv(st->fd, buf, (size_t)len, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        st->drained = n < len;
        return (int)n;
    }
    st->drained = 1;
    if (n == 0) return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
    return -1;
}

// Sends what is gathered; 1 all sent, 0 would block (the rest is then the connection's own),
// -1 error (the rest is dropped: the connection is failing).
static int sock_flush_gather(edgemux_sock *st) {
    while (st->sent < st->gathered) {
        ssize_t n = send(st->fd, st->gather + st->sent, st->gathered - st->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!st->owned) {
                    size_t rest = st->gathered - st->sent;
                    unsigned char *copy = malloc(rest);
                    if (copy == NULL) {
                        sock_drop_gather(st);
                        return -1;
                    }
                    memcpy(copy, st->gather + st->sent, rest);
                    st->gather = copy;
                    st->owned = 1;
                    st->gathered = rest;
                    st->sent = 0;
                }
                return 0;
            }
            sock_drop_gather(st);
            return -1;
        }
        st->sent += (size_t)n;
    }
    sock_drop_gather(st);
    return 1;
}

static int sock_write(BIO *b, const char *buf, int len) {
    edgemux_sock *st = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (st->gathered > 0 && (st->owned || !st->corked || st->gathered + (size_t)len > EDGEMUX_GATHER_CAP)) {
        // Earlier bytes go first: a remainder the socket did not take, or a full gather buffer.
        int r = sock_flush_gather(st);
        if (r <= 0) {
            if (r == 0) BIO_set_retry_write(b);
            return -1;
        }
    }
    if (st->corked && (size_t)len <= EDGEMUX_GATHER_CAP) {
        if (st->gather == NULL) {
            if (edgemux_gather_scratch == NULL) edgemux_gather_scratch = malloc(EDGEMUX_GATHER_CAP);
            if (edgemux_gather_scratch == NULL) return -1;
            st->gather = edgemux_gather_scratch;
            st->owned = 0;
        }
        memcpy(st->gather + st->gathered, buf, (size_t)len);
        st->gathered += (size_t)len;
        return len;
    }
    ssize_t n;
    do {
        n = send(st->fd, buf, (size_t)len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
    return -1;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)num;
    (void)ptr;
    edgemux_sock *st = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: {
        int r = sock_flush_gather(st);
        if (r == 0) BIO_set_retry_write(b);
        return r > 0 ? 1 : 0;
    }
    case BIO_CTRL_WPENDING: return (long)(st->gathered - st->sent);
    case BIO_CTRL_PENDING: return 0;
    case BIO_CTRL_DUP: return 1;
    default: return 0;
    }
}

static int sock_create(BIO *b) {
    edgemux_sock *st = calloc(1, sizeof *st);
    if (st == NULL) return 0;
    st->fd = -1;
    BIO_set_data(b, st);
    BIO_set_init(b, 1);
    return 1;
}

static int sock_destroy(BIO *b) {
    edgemux_sock *st = BIO_get_data(b);
    if (st != NULL) {
        sock_drop_gather(st);
        free(st);
    }
    BIO_set_data(b, NULL);
    return 1;
}

static void sock_method_init(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "edgemux socket");
    BIO_meth_set_read(m, sock_read);
    BIO_meth_set_write(m, sock_write);
    BIO_meth_set_ctrl(m, sock_ctrl);
    BIO_meth_set_create(m, sock_create);
    BIO_meth_set_destroy(m, sock_destroy);
    edgemux_sock_method = m;
}

BIO *CEdgemux_BIO_new_socket(int fd) {
    pthread_once(&edgemux_sock_once, sock_method_init);
    BIO *b = BIO_new(edgemux_sock_method);
    if (b == NULL) return NULL;
    ((edgemux_sock *)BIO_get_data(b))->fd = fd;
    return b;
}

void CEdgemux_BIO_socket_note_edge(BIO *bio) { ((edgemux_sock *)BIO_get_data(bio))->edge = 1; }
void CEdgemux_BIO_socket_note_hangup(BIO *bio) { ((edgemux_sock *)BIO_get_data(bio))->hangup = 1; }

int CEdgemux_BIO_socket_drained(BIO *bio) { return ((edgemux_sock *)BIO_get_data(bio))->drained; }

void CEdgemux_BIO_socket_cork(BIO *bio, int cork) { ((edgemux_sock *)BIO_get_data(bio))->corked = cork; }

int CEdgemux_BIO_socket_flush(BIO *bio) { return sock_flush_gather(BIO_get_data(bio)); }

size_t CEdgemux_BIO_socket_pending(BIO *bio) {
    edgemux_sock *st = BIO_get_data(bio);
    return st->gathered - st->sent;
}

int CEdgemux_malloc_trim(void) { return malloc_trim(0); }

// MARK: - memory an idle HTTP/2 session gives back

/// nghttp2 1.52's frame buffer chunk: NGHTTP2_FRAMEBUF_CHUNKLEN (frame header, pad length byte,
/// the largest payload it serialises), allocated once per session (nghttp2_session.c).
#define H2_FRAMEBUF_LENGTH (9 + 1 + 16384)
/// Blocks of at least this size go on page boundaries and may be tracked.
#define H2_PAGE 4096
#define H2_TRACKED 8

typedef enum { H2_SCRATCH = 1, H2_ZERO_TABLE = 2 } h2_block_kind;

struct CEdgemux_h2_memory {
    nghttp2_mem mem;
    void *blocks[H2_TRACKED];
    size_t lengths[H2_TRACKED];
    unsigned char kinds[H2_TRACKED];
};

static void h2_track(CEdgemux_h2_memory *m, void *p, size_t n, h2_block_kind kind) {
    for (int i = 0; i < H2_TRACKED; i++) {
        if (m->blocks[i] == NULL) {
            m->blocks[i] = p;
            m->lengths[i] = n;
            m->kinds[i] = (unsigned char)kind;
            return;
        }
    }
    // More than H2_TRACKED large blocks at once: this one is simply never given back.
}

static void h2_untrack(CEdgemux_h2_memory *m, void *p) {
    for (int i = 0; i < H2_TRACKED; i++) {
        if (m->blocks[i] == p) {
            m->blocks[i] = NULL;
            return;
        }
    }
}

static void *h2_aligned(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, H2_PAGE, n) == 0 ? p : NULL;
}

static void *h2_malloc(size_t n, void *user) {
    if (n != H2_FRAMEBUF_LENGTH) return malloc(n);
    void *p = h2_aligned(n);
    if (p) h2_track(user, p, n, H2_SCRATCH);
    return p;
}

static void h2_free(void *p, void *user) {
    if (p == NULL) return;
    h2_untrack(user, p);
    free(p);
}

static void *h2_calloc(size_t count, size_t size, void *user) {
    // Only the session object and the stream map's tables are calloc'd; the tables are large.
    if (size != 0 && count > SIZE_MAX / size) return NULL;
    size_t n = count * size;
    if (n < H2_PAGE) return calloc(count, size);
    void *p = h2_aligned(n);
    if (p) {
        memset(p, 0, n);
        h2_track(user, p, n, H2_ZERO_TABLE);
    }
    return p;
}

static void *h2_realloc(void *p, size_t n, void *user) {
    // nghttp2 makes its buffers with realloc(NULL, n) (nghttp2_buf_reserve).
    if (p == NULL) return h2_malloc(n, user);
    h2_untrack(user, p);
    return realloc(p, n);
}

CEdgemux_h2_memory *CEdgemux_h2_memory_new(void) {
    CEdgemux_h2_memory *m = calloc(1, sizeof(*m));
    if (m == NULL) return NULL;
    m->mem.mem_user_data = m;
    m->mem.malloc = h2_malloc;
    m->mem.free = h2_free;
    m->mem.calloc = h2_calloc;
    m->mem.realloc = h2_realloc;
    return m;
}

void CEdgemux_h2_memory_free(CEdgemux_h2_memory *memory) { free(memory); }

nghttp2_mem *CEdgemux_h2_memory_allocator(CEdgemux_h2_memory *memory) { return &memory->mem; }

static int h2_all_zero(const unsigned char *p, size_t n) {
    const uint64_t *w = (const uint64_t *)(const void *)p;  // page aligned
    for (size_t i = 0; i < n / 8; i++) {
        if (w[i] != 0) return 0;
    }
    for (size_t i = n & ~(size_t)7; i < n; i++) {
        if (p[i] != 0) return 0;
    }
    return 1;
}

size_t CEdgemux_h2_memory_release_idle(CEdgemux_h2_memory *memory) {
    size_t released = 0;
    for (int i = 0; i < H2_TRACKED; i++) {
        unsigned char *p = memory->blocks[i];
        if (p == NULL) continue;
        size_t whole = memory->lengths[i] & ~(size_t)(H2_PAGE - 1);
        if (whole == 0) continue;
        // A table may hold live entries (idle streams a PRIORITY frame made): only an all-zero
        // one is empty, and zero pages are what it will read back.
        if (memory->kinds[i] == H2_ZERO_TABLE && !h2_all_zero(p, memory->lengths[i])) continue;
        if (madvise(p, whole, MADV_DONTNEED) == 0) released += whole;
    }
    return released;
}

// MARK: - client certificates

int CEdgemux_SSL_CTX_request_client_certificates(SSL_CTX *ctx, const char *ca_path, int required) {
    if (SSL_CTX_load_verify_locations(ctx, ca_path, NULL) != 1) return 0;
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_path);
    if (names == NULL) return 0;
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    SSL_CTX_set_verify_depth(ctx, 8);
    return 1;
}

size_t CEdgemux_SSL_verified_peer_subject(SSL *ssl, char *out, size_t cap) {
    if (cap == 0) return 0;
    out[0] = 0;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer == NULL || SSL_get_verify_result(ssl) != X509_V_OK) return 0;
    BIO *mem = BIO_new(BIO_s_mem());
    if (mem == NULL) return 0;
    size_t n = 0;
    if (X509_NAME_print_ex(mem, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253) >= 0) {
        char *data = NULL;
        long len = BIO_get_mem_data(mem, &data);
        if (len > 0 && data != NULL) {
            n = (size_t)len < cap - 1 ? (size_t)len : cap - 1;
            memcpy(out, data, n);
            out[n] = 0;
        }
    }
    BIO_free(mem);
    return n;
}

// MARK: - OCSP stapling

static int64_t asn1_time_seconds(const ASN1_TIME *t) {
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    return (int64_t)timegm(&tm);
}

CEdgemux_ocsp_staple *CEdgemux_ocsp_staple_load(SSL_CTX *ctx, const char *path, char *why, size_t why_cap,
                                                 char *status, size_t status_cap) {
    CEdgemux_ocsp_staple *staple = NULL;
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *basic = NULL;
    OCSP_CERTID *id = NULL;
    unsigned char *der = NULL;
    long len = 0;
    why[0] = 0;
    if (status_cap > 0) status[0] = 0;

    BIO *in = BIO_new_file(path, "rb");
    if (in == NULL) { snprintf(why, why_cap, "cannot read %s", path); goto done; }
    resp = d2i_OCSP_RESPONSE_bio(in, NULL);
    BIO_free(in);
    if (resp == NULL) { snprintf(why, why_cap, "%s is not a DER OCSP response (openssl ocsp -respout writes one)", path); goto done; }
    int rs = OCSP_response_status(resp);
    if (rs != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        snprintf(why, why_cap, "the OCSP response in %s is not successful: %s", path, OCSP_response_status_str(rs));
        goto done;
    }
    basic = OCSP_response_get1_basic(resp);
    if (basic == NULL) { snprintf(why, why_cap, "the OCSP response in %s has no basic response", path); goto done; }

    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(ctx, &chain);
    X509 *issuer = NULL;
    for (int i = 0; leaf != NULL && i < sk_X509_num(chain); i++) {
        X509 *c = sk_X509_value(chain, i);
        if (X509_check_issued(c, leaf) == X509_V_OK) { issuer = c; break; }
    }
    X509 *issuer_from_store = NULL;
    if (leaf != NULL && issuer == NULL) {
        // A leaf issued by a root straight away often comes without it: look in the system's
        // trust store (the issuer's name and key are all the certificate ID needs).
        X509_STORE *store = X509_STORE_new();
        X509_STORE_CTX *sctx = X509_STORE_CTX_new();
        if (store != NULL && sctx != NULL && X509_STORE_set_default_paths(store) == 1 &&
            X509_STORE_CTX_init(sctx, store, leaf, NULL) == 1 &&
            X509_STORE_CTX_get1_issuer(&issuer_from_store, sctx, leaf) == 1) {
            issuer = issuer_from_store;
        }
        X509_STORE_CTX_free(sctx);
        X509_STORE_free(store);
        ERR_clear_error();
    }
    if (leaf == NULL || issuer == NULL) {
        snprintf(why, why_cap, "the certificate file lacks the issuer of its certificate, needed to match the OCSP response in %s: append the intermediate (or CA) certificate", path);
        goto done;
    }
    id = OCSP_cert_to_id(NULL, leaf, issuer);
    X509_free(issuer_from_store);
    int cert_status = 0, reason = 0;
    ASN1_GENERALIZEDTIME *revoked = NULL, *this_update = NULL, *next_update = NULL;
    if (id == NULL || OCSP_resp_find_status(basic, id, &cert_status, &reason, &revoked, &this_update, &next_update) != 1) {
        snprintf(why, why_cap, "the OCSP response in %s is not about this certificate", path);
        goto done;
    }
    if (OCSP_check_validity(this_update, next_update, 300, -1) != 1) {
        ERR_clear_error();
        snprintf(why, why_cap, "the OCSP response in %s is out of date (or not yet valid): fetch a new one", path);
        goto done;
    }
    if (status_cap > 0) snprintf(status, status_cap, "%s", OCSP_cert_status_str(cert_status));
    len = i2d_OCSP_RESPONSE(resp, &der);
    if (len <= 0) { snprintf(why, why_cap, "cannot encode the OCSP response in %s", path); goto done; }
    staple = calloc(1, sizeof *staple);
    if (staple == NULL) { OPENSSL_free(der); snprintf(why, why_cap, "out of memory"); goto done; }
    staple->der = der;
    staple->len = len;
    staple->next_update = asn1_time_seconds(next_update);
done:
    OCSP_CERTID_free(id);
    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
    return staple;
}

void CEdgemux_ocsp_staple_free(CEdgemux_ocsp_staple *staple) {
    if (staple == NULL) return;
    OPENSSL_free(staple->der);
    free(staple);
}

/// Called only for a client that sent status_request: each handshake gets its own copy, which
/// OpenSSL frees with the connection.
static int ocsp_staple_cb(SSL *ssl, void *arg) {
    const CEdgemux_ocsp_staple *staple = arg;
    if (staple == NULL || staple->len <= 0) return SSL_TLSEXT_ERR_NOACK;
    if (staple->next_update != 0 && (int64_t)time(NULL) > staple->next_update) return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = OPENSSL_memdup(staple->der, (size_t)staple->len);
    if (copy == NULL) return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, staple->len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

void CEdgemux_SSL_CTX_set_ocsp_staple(SSL_CTX *ctx, CEdgemux_ocsp_staple *staple) {
    SSL_CTX_set_tlsext_status_cb(ctx, ocsp_staple_cb);
    SSL_CTX_set_tlsext_status_arg(ctx, staple);
}
