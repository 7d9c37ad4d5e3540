/*
 * The OpenSSL floor for the handshake benchmark: an epoll TLS server that does nothing but what
 * tlsconn asks of every proxy (full TLS 1.3 handshake, read one request, answer "ok", close),
 * configured as edgemux is: one session ticket per handshake, no session cache, buffers released
 * while idle. It connects to no backend, so what a proxy costs beyond it is the proxy's own work
 * plus the backend round trip. Used by handshake-floor.sh; not a server to run for anything else.
 *
 * Build: cc -O2 -o bare-tls-server bare-tls-server.c -lssl -lcrypto
 * Usage: bare-tls-server PORT CERT KEY   (listens on 127.0.0.1; stops after 120 s)
 */
#define _GNU_SOURCE
#include "bare-tls-common.h"
#include <signal.h>
#include <unistd.h>

typedef struct { int fd; SSL *ssl; int established; } conn_t;

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s PORT CERT KEY\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    alarm(120);  /* bounded: never outlives a benchmark */
    SSL_CTX *ctx = floor_server_ctx(argv[2], argv[3]);
    int l, ep = floor_listen(argv[1], &l);
    static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->ssl = SSL_new(ctx);
                    SSL_set_fd(c->ssl, fd);
                    struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            int done = 0;
            if (!c->established) {
                int r = SSL_accept(c->ssl);
                if (r == 1) c->established = 1;
                else {
                    int e = SSL_get_error(c->ssl, r);
                    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) done = 1;
                }
            }
            if (c->established) {
                char buf[4096];
                int r = SSL_read(c->ssl, buf, sizeof buf);
                if (r > 0) {
                    SSL_write(c->ssl, answer, sizeof answer - 1);
                    SSL_shutdown(c->ssl);
                    done = 1;
                } else if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) {
                    done = 1;
                }
            }
            if (done) {
                SSL_free(c->ssl);
                close(c->fd);
                free(c);
            }
        }
    }
}
