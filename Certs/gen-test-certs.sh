#!/usr/bin/env bash
# Makes throwaway test certificates in DIR (default ./test-certs): a CA, server certificates for
# "localhost" (plus 127.0.0.1 and ::1) and for "other.test", and a client certificate, all ECDSA
# P-256 and signed by the CA. The tests run this into a temporary folder; nothing here is for
# production use, and no key is committed.
set -euo pipefail
dir=${1:-./test-certs}
mkdir -p "$dir"
cd "$dir"
[ -f ca.pem ] && [ -f localhost.pem ] && [ -f other.pem ] && [ -f client.pem ] && exit 0

openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=edgemux test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.pem 2>/dev/null

issue() { # name san extendedKeyUsage
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' "$2" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue localhost "DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth
issue other "DNS:other.test,DNS:*.other.test" serverAuth
issue client "DNS:client.test" clientAuth
echo "test certificates in $(pwd)"
