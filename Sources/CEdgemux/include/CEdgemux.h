// CEdgemux: the one C boundary of edgemux.
//
// Swift cannot import function-like macros (most of OpenSSL's SSL_CTX_set_* API is macros over
// SSL_CTX_ctrl) and a header that defines _GNU_SOURCE changes how glibc declares accept4 and
// splice for every importer. So each such call gets one plain C function here, named
// CEdgemux_<C name>, and _GNU_SOURCE is defined in shim.c only.
#ifndef CEDGEMUX_H
#define CEDGEMUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <nghttp2/nghttp2.h>

// MARK: - _GNU_SOURCE system calls

int CEdgemux_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
int CEdgemux_pipe2(int fds[2], int flags);
ssize_t CEdgemux_splice(int fd_in, int fd_out, size_t len, unsigned int flags);
/// The flags splice(2) wants for a relay: SPLICE_F_MOVE | SPLICE_F_NONBLOCK.
unsigned int CEdgemux_splice_relay_flags(void);
int CEdgemux_errno(void);

// MARK: - OpenSSL macros

long CEdgemux_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);
long CEdgemux_SSL_CTX_set_options(SSL_CTX *ctx, uint64_t options);
int CEdgemux_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int CEdgemux_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
long CEdgemux_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
void CEdgemux_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes);
/// Session ticket keys, `count` of 80 bytes each (name 16, HMAC 32, AES 32): the first encrypts,
/// every one decrypts (a ticket under another than the first is renewed). 1 on success.
int CEdgemux_SSL_CTX_set_ticket_keys(SSL_CTX *ctx, const unsigned char *keys, int count);
int CEdgemux_SSL_set_tlsext_host_name(SSL *ssl, const char *name);
/// Verifies the peer certificate against `name`: an IP literal as an IP SAN, otherwise as a DNS
/// name (and sends it as SNI). 1 on success.
int CEdgemux_SSL_set_peer_name(SSL *ssl, const char *name, int verify);
int CEdgemux_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list);

/// Default modes for every edgemux SSL_CTX: partial writes, moving write buffers (our buffers
/// compact), and released buffers while a connection idles (memory per idle connection).
long CEdgemux_default_modes(void);
/// SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION.
uint64_t CEdgemux_default_server_options(void);
int CEdgemux_TLS1_2_VERSION(void);
int CEdgemux_TLS1_3_VERSION(void);

/// The server's ALPN protocols, length-prefixed as on the wire, in preference order.
typedef struct CEdgemux_alpn_list {
    const unsigned char *wire;
    unsigned int len;
} CEdgemux_alpn_list;
/// Installs an ALPN select callback that picks by the server's preference from `list`. A client
/// list with none of them gets the no_application_protocol alert; a client without ALPN is not
/// affected. `list` and its bytes are owned by the caller and must outlive the context.
void CEdgemux_SSL_CTX_set_alpn_server_protocols(SSL_CTX *ctx, CEdgemux_alpn_list *list);

/// Installs an SNI callback on `ctxs[0]` that switches a connection to the first of `ctxs` whose
/// leaf certificate matches the server name (X509_check_host: wildcards as in RFC 6125); no
/// match or no SNI keeps ctxs[0]. The table is owned by the caller and must outlive ctxs[0].
typedef struct CEdgemux_sni_table {
    SSL_CTX **ctxs;
    size_t count;
} CEdgemux_sni_table;
void CEdgemux_SSL_CTX_set_sni_table(SSL_CTX *ctx, CEdgemux_sni_table *table);

// MARK: - The socket BIO of every edgemux TLS connection

/// A BIO on a non-blocking socket that, unlike OpenSSL's own, (1) remembers whether its last read
/// emptied the socket (a short read or EAGAIN), so an edge-triggered loop can skip the read that
/// would only confirm EAGAIN, and (2) while corked, gathers the records of one SSL_write burst
/// into a single send(2) (up to 64 KiB) instead of one per 16 KiB record. Writes use
/// MSG_NOSIGNAL. Bursts gather in a per-thread buffer; a connection holds memory only for what
/// its socket could not take.
BIO *CEdgemux_BIO_new_socket(int fd);
/// 1 if the last read left the socket empty (short read, EAGAIN or EOF).
int CEdgemux_BIO_socket_drained(BIO *bio);
/// The socket raised EPOLLIN (or a hangup) since the last read: the next read calls recv(2).
void CEdgemux_BIO_socket_note_edge(BIO *bio);
/// The peer's FIN (or a socket error) was signalled: reads always ask the socket from now on.
void CEdgemux_BIO_socket_note_hangup(BIO *bio);
/// Gather writes until uncorked (1) or send them as they come (0).
void CEdgemux_BIO_socket_cork(BIO *bio, int cork);
/// Sends gathered bytes: 1 all sent, 0 the socket is full (wait for EPOLLOUT), -1 error (errno).
int CEdgemux_BIO_socket_flush(BIO *bio);
/// Bytes gathered and not yet sent.
size_t CEdgemux_BIO_socket_pending(BIO *bio);

/// The first queued OpenSSL error as text in `out` (empty when none); clears the queue.
void CEdgemux_ERR_text(char *out, size_t cap);
/// The first queued OpenSSL error was the record layer seeing plain HTTP (a request line, or
/// CONNECT) where a TLS handshake was due. Leaves the queue as it is.
int CEdgemux_ERR_peek_plain_http(void);
/// Empties this thread's OpenSSL error queue, as SSL_get_error needs before every TLS I/O call.
/// ERR_clear_error always walks all of the queue's slots; on the relay path the queue is nearly
/// always empty already, and a look at it costs a fraction of that.
void CEdgemux_ERR_clear(void);

/// Asks clients for a certificate signed by the CA in `ca_path` (PEM), whose names are sent in
/// the CertificateRequest; `required`: a client without one fails the handshake. 1 on success.
int CEdgemux_SSL_CTX_request_client_certificates(SSL_CTX *ctx, const char *ca_path, int required);
/// The verified client certificate's subject as RFC 2253 text into `out`: its length, 0 when
/// the client sent none or it did not verify.
size_t CEdgemux_SSL_verified_peer_subject(SSL *ssl, char *out, size_t cap);

/// An OCSP response stapled to the handshakes of one SSL_CTX (RFC 6066 section 8; TLS 1.3 in
/// the Certificate message). Checked when loaded; stapled only while `next_update` (Unix
/// seconds, 0: none given) has not passed, so an expired answer never makes a client fail hard.
typedef struct CEdgemux_ocsp_staple {
    unsigned char *der;
    long len;
    int64_t next_update;
} CEdgemux_ocsp_staple;

/// Reads the DER OCSP response in `path` and checks it against the leaf certificate loaded in
/// `ctx` (whose chain must hold the issuer): a successful response, with a single response for
/// that certificate, current by its thisUpdate and nextUpdate (5 minutes of clock skew).
/// Returns a staple (free with CEdgemux_ocsp_staple_free), or NULL with the reason in `why`.
/// `status` gets "good", "revoked" or "unknown".
CEdgemux_ocsp_staple *CEdgemux_ocsp_staple_load(SSL_CTX *ctx, const char *path, char *why, size_t why_cap,
                                                 char *status, size_t status_cap);
void CEdgemux_ocsp_staple_free(CEdgemux_ocsp_staple *staple);
/// Staples `staple` (owned by the caller, alive as long as `ctx`) to handshakes whose client asks.
void CEdgemux_SSL_CTX_set_ocsp_staple(SSL_CTX *ctx, CEdgemux_ocsp_staple *staple);

/// Does the leaf certificate in `ctx` match its private key?
int CEdgemux_SSL_CTX_check_private_key(const SSL_CTX *ctx);

/// Makes a self-signed ECDSA P-256 certificate for `cn` (also as a DNS SAN, plus 127.0.0.1 and
/// ::1), valid for `days`, and writes PEM files. 1 on success.
int CEdgemux_make_self_signed(const char *cn, int days, const char *cert_path, const char *key_path);

/// libFuzzer's driver (linked only into the fuzzing build of edgemux-fuzz, -sanitize=fuzzer).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

/// glibc's malloc_trim(0): free memory in every arena goes back to the kernel.
int CEdgemux_malloc_trim(void);

// MARK: - memory an idle HTTP/2 session gives back

/// An nghttp2 allocator (nghttp2_session_server_new3) for one session that can give the pages
/// of its large blocks back to the kernel while the session is idle. An idle nghttp2 1.52 server
/// session holds about 25 KiB, 20 of them in two blocks whose contents are dead when nothing is
/// being sent and no stream exists: the 16 KiB frame buffer (one frame is serialised there and
/// then sent) and the stream map's table (all zero when empty). Those blocks are allocated on
/// page boundaries, and `CEdgemux_h2_memory_release_idle` drops their whole pages with
/// madvise(MADV_DONTNEED): the mapping stays, the next touch gets a zeroed page.
typedef struct CEdgemux_h2_memory CEdgemux_h2_memory;
CEdgemux_h2_memory *CEdgemux_h2_memory_new(void);
/// After nghttp2_session_del.
void CEdgemux_h2_memory_free(CEdgemux_h2_memory *memory);
/// The allocator to give nghttp2 (lives as long as `memory`).
nghttp2_mem *CEdgemux_h2_memory_allocator(CEdgemux_h2_memory *memory);
/// Gives back the pages of the frame buffer (only call when nghttp2_session_want_write is 0:
/// no frame is half sent) and of every table that is all zero. Returns the bytes released.
size_t CEdgemux_h2_memory_release_idle(CEdgemux_h2_memory *memory);

#endif
