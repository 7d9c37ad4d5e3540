# Shared by loadtest.sh and handshake-floor.sh (sourced): what they must do exactly as
# ../shared/bench/peers/run.sh does, so that their figures compare with the side-by-side run.

# bench_client_cnf FILE: the clients' OpenSSL config: one TLS 1.3 suite and one group, so every
# server negotiates the same thing.
bench_client_cnf() {
  printf 'openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\nsystem_default = sd\n[sd]\nCiphersuites = TLS_AES_128_GCM_SHA256\nGroups = X25519\n' > "$1"
}

# bench_render TEMPLATE RUN WWW CERTS [PORT]: a config template of the peers harness (backend on
# :9001 HTTP/1.1 and :9002 h2c), rendered with these folders, on stdout.
bench_render() {
  sed -e "s#@RUN@#$2#g; s#@WWW@#$3#g; s#@CERTS@#$4#g; s#@H1_PORT@#9001#g; s#@H2C_PORT@#9002#g; s#@PORT@#${5:-0}#g; s#@NGINX_H2_ROUTE@#grpc_pass grpc://be_h2c;#g" \
    "$PEERS/conf/$1"
}
