#!/usr/bin/env bash
# Captures the seed corpora in Tests/Fuzz/corpus/<target>/ from real clients and servers on
# loopback: what curl, nghttp, h2load, a gRPC client, a WebSocket client, openssl, Chromium and
# HAProxy send first, and what nginx and Python's http.server answer. Run it again to refresh the
# seeds (the files are committed: fuzz.sh and the unit tests replay them). Needs the Debian
# packages curl nghttp2-client python3-grpcio python3-websockets openssl chromium haproxy nginx.
set -euo pipefail
cd "$(dirname "$0")"
corpus=$PWD/corpus
work=$(mktemp -d /tmp/edgemux-seeds-XXXXXX)
chmod 755 "$work"  # nginx workers (another user) serve $work/www
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
py=/usr/bin/python3

# capture TARGET NAME ANSWER -- CLIENT... (PORT in the client's arguments becomes the port)
capture() {
  local target=$1 name=$2 answer=$3; shift 4
  mkdir -p "$corpus/$target"
  rm -f "$work/port"
  "$py" capture.py "$corpus/$target/$name" --answer "$answer" --port-file "$work/port" --wait 15 >/dev/null &
  local cap=$!
  for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
  local port; port=$(cat "$work/port")
  local args=(); for a in "$@"; do args+=("${a//PORT/$port}"); done
  timeout 15 "${args[@]}" >/dev/null 2>&1 || true
  wait "$cap" || true
}

# HTTP/1.1 request heads (and the chunked body after one).
capture h1-request curl-get none -- curl -s --max-time 3 http://127.0.0.1:PORT/api/v1/projects?limit=20
capture h1-request curl-post none -- curl -s --max-time 3 -H 'Content-Type: application/json' -d '{"name":"edge"}' http://127.0.0.1:PORT/v1/clusters
capture h1-request curl-chunked none -- sh -c 'printf "part one\npart two\n" | curl -s --max-time 3 -T - -H "Transfer-Encoding: chunked" -H "Expect:" http://127.0.0.1:PORT/upload'
capture h1-request curl-path-as-is none -- curl -s --max-time 3 --path-as-is 'http://127.0.0.1:PORT/a/./b/../c/%2e%2e/d?x=1'
capture h1-request curl-expect none -- sh -c 'head -c 2000 /dev/zero | curl -s --max-time 3 -H "Expect: 100-continue" --data-binary @- http://127.0.0.1:PORT/big'
capture h1-request websocket none -- "$py" -c "import asyncio, websockets
async def main():
    async with websockets.connect('ws://127.0.0.1:PORT/ws', open_timeout=2): pass
asyncio.run(main())"
capture h1-request h2c-upgrade none -- curl -s --max-time 3 --http2 http://127.0.0.1:PORT/upgrade
capture connect-request curl-proxy connect-200 -- curl -s --max-time 3 -p -x http://127.0.0.1:PORT https://cluster-1.example.test:6443/version
capture connect-request curl-proxy-auth connect-200 -- curl -s --max-time 3 -p -x http://platform:s3cret@127.0.0.1:PORT https://10.0.0.7:6443/api
capture connect-request curl-proxy-ipv6 connect-200 -- curl -s --max-time 3 -p -x http://127.0.0.1:PORT 'https://[fd00::7]:6443/'
mkdir -p "$corpus/h1-head"
cp "$corpus"/h1-request/* "$corpus"/connect-request/* "$corpus/h1-head/"
mkdir -p "$corpus/chunked"
"$py" - "$corpus/h1-request/curl-chunked" "$corpus/chunked/curl-upload" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(b"\x40" + data[data.index(b"\r\n\r\n") + 4:])
PY

# HTTP/2 connection starts (prior knowledge: preface, SETTINGS, then the first HEADERS).
capture h2-sniffer curl-h2c h2-settings -- curl -s --max-time 3 --http2-prior-knowledge http://127.0.0.1:PORT/api/v1/users
capture h2-sniffer curl-h2c-post h2-settings -- curl -s --max-time 3 --http2-prior-knowledge -d 'a=1' http://127.0.0.1:PORT/form
capture h2-sniffer nghttp h2-settings -- nghttp -n -t 3 http://127.0.0.1:PORT/index.html
capture h2-sniffer h2load h2-settings -- h2load -n 4 -c 1 -m 4 http://127.0.0.1:PORT/bench
capture h2-sniffer grpc h2-settings -- "$py" -c "import grpc
ch = grpc.insecure_channel('127.0.0.1:PORT')
try: ch.unary_unary('/agent.v1.Agent/Connect')(b'\x00', timeout=2)
except Exception: pass"

# TLS ClientHellos (the egress sni mode reads the SNI from them).
capture client-hello openssl none -- sh -c 'openssl s_client -connect 127.0.0.1:PORT -servername cluster-7.proxy.example.com -alpn h2,http/1.1 </dev/null'
capture client-hello openssl-tls12 none -- sh -c 'openssl s_client -connect 127.0.0.1:PORT -servername api.example.test -tls1_2 </dev/null'
capture client-hello curl none -- curl -s --max-time 3 https://platform.example.test:PORT/ --resolve platform.example.test:PORT:127.0.0.1
capture client-hello python none -- "$py" -c "import socket, ssl
s = socket.create_connection(('127.0.0.1', PORT)); ssl.create_default_context().wrap_socket(s, server_hostname='k8s.example.test')"
capture client-hello chromium none -- chromium --headless=new --no-sandbox --disable-gpu --user-data-dir="$work/chromium" --timeout=3000 --dump-dom https://ui.example.test:PORT/ --host-resolver-rules='MAP ui.example.test 127.0.0.1'
capture client-hello openssl-no-sni none -- sh -c 'openssl s_client -connect 127.0.0.1:PORT -noservername </dev/null'

# PROXY protocol headers from HAProxy (v1 and v2, with TLVs) and curl.
capture proxy-protocol curl-v1 none -- curl -s --max-time 3 --haproxy-protocol http://127.0.0.1:PORT/
for v in send-proxy send-proxy-v2 "send-proxy-v2 proxy-v2-options authority,crc32c,unique-id"; do
  name=haproxy-$(echo "$v" | tr ' ,' '--')
  front=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 10
defaults
  mode tcp
  timeout connect 2s
  timeout client 5s
  timeout server 5s
frontend f
  bind 127.0.0.1:$front
  unique-id-format %{+X}o%ci:%cp
  default_backend b
backend b
  server s 127.0.0.1:CAPTUREPORT $v
CFG
  mkdir -p "$corpus/proxy-protocol"; rm -f "$work/port"
  "$py" capture.py "$corpus/proxy-protocol/$name" --port-file "$work/port" --wait 15 >/dev/null &
  cap=$!
  for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
  sed -i "s/CAPTUREPORT/$(cat "$work/port")/" "$work/haproxy.cfg"
  haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
  hp=$!; pids+=("$hp")
  sleep 0.5
  curl -s --max-time 2 "http://127.0.0.1:$front/via-haproxy" >/dev/null 2>&1 || true
  wait "$cap" || true
  kill "$hp" 2>/dev/null || true
done

# Response heads from real servers: nginx (static, 304, 404, HEAD, gzip makes it chunked) and
# Python's http.server. The first byte of a response seed says whether the request was HEAD.
mkdir -p "$corpus/h1-response" "$work/www" "$work/nginx"
seq 1 400 > "$work/www/index.html"
nport=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
cat > "$work/nginx/nginx.conf" <<CFG
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$nport; root $work/www; gzip on; gzip_min_length 1; gzip_types text/plain; default_type text/plain; }
}
CFG
nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)
pyport=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
(cd "$work/www" && exec "$py" -m http.server --bind 127.0.0.1 "$pyport" >/dev/null 2>&1) &
pids+=($!)
sleep 1
respond() { # name port head(0|1) request
  "$py" - "$corpus/h1-response/$1" "$2" "$3" "$4" <<'PY'
import socket, sys
out, port, head, request = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode().decode("unicode_escape").encode()
s = socket.create_connection(("127.0.0.1", port), timeout=3)
s.sendall(request)
data = b""
try:
    while len(data) < 65536:
        c = s.recv(65536)
        if not c: break
        data += c
except socket.timeout:
    pass
open(out, "wb").write(bytes([int(head)]) + data)
PY
}
respond nginx-static "$nport" 0 'GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
respond nginx-gzip-chunked "$nport" 0 'GET /index.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n'
respond nginx-head "$nport" 1 'HEAD /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
modified=$(date -u -r "$work/www/index.html" '+%a, %d %b %Y %H:%M:%S GMT')
respond nginx-304 "$nport" 0 "GET /index.html HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: $modified\r\nConnection: close\r\n\r\n"
respond nginx-404 "$nport" 0 'GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
respond nginx-100-continue "$nport" 0 'POST /index.html HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n'
respond python-http-server "$pyport" 0 'GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n'
respond python-http-server-dir "$pyport" 0 'GET / HTTP/1.0\r\n\r\n'
"$py" - "$corpus/h1-response/nginx-gzip-chunked" "$corpus/chunked/nginx-gzip" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()[1:]
open(sys.argv[2], "wb").write(b"\x80" + data[data.index(b"\r\n\r\n") + 4:])
PY

# Paths: the request targets of the captured heads.
mkdir -p "$corpus/path"
for f in "$corpus"/h1-request/*; do
  head -1 "$f" | awk '{printf "%s", $2}' > "$corpus/path/$(basename "$f")"
done
printf '/x/../api/v1/%%2e%%2E/./users//%%41b?q=/../' > "$corpus/path/dot-segments"

# Configs: the README's reference config and the examples in Deploy/.
mkdir -p "$corpus/config"
"$py" - ../../README.md "$corpus/config/readme" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
open(sys.argv[2], "w").write(max(blocks, key=len) if blocks else "")
PY
for f in ../../Deploy/*.yaml; do [ -f "$f" ] && cp "$f" "$corpus/config/$(basename "$f" .yaml)"; done
find "$corpus" -type f -empty -print -delete | sed 's/^/empty capture (dropped): /' >&2
echo "seeds: $(find "$corpus" -type f | wc -l) files in $corpus"
