#!/usr/bin/env bash
# The Debian package as an operator gets it: built (Deploy/package.sh), checked by lintian,
# installed with apt, its systemd unit verified, then edgemux started without systemctl from the
# installed paths as the package's own user (binding 443 by CAP_NET_BIND_SERVICE alone, as the
# unit grants it), serving a request, reloading, draining on SIGTERM; finally purged.
# Installing needs root (CI machines are throwaway): without it, only the build and lintian run.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "package-test: $*"; }
fail() { echo "package-test: FAILED: $*" >&2; exit 1; }

deb="$(bash Deploy/package.sh | tail -1)"
say "built $deb ($(du -h "$deb" | cut -f1))"
# --fail-on warning: every warning is a failure (pedantic and info tags are shown, not fatal).
lintian --fail-on error,warning "$deb" 2>&1 | sed 's/^/lintian: /' \
  || fail "lintian"
say "lintian: no errors or warnings"

if [ "$(id -u)" -ne 0 ]; then say "not root: install, start and purge skipped"; exit 0; fi
if dpkg-query -W -f='${Status}' edgemux 2>/dev/null | grep -q "install ok installed"; then
  fail "an edgemux package is installed already: this test installs and purges its own"
fi

if [ -e /etc/edgemux ]; then fail "/etc/edgemux exists (Deploy/dev.sh install?): this test installs and purges its own"; fi
work="$(mktemp -d "${TMPDIR:-/tmp}/edgemux-package-test.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq edgemux >/dev/null 2>&1 || true
  rm -rf "$work" /etc/edgemux
}
trap cleanup EXIT

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$(realpath "$deb")" > "$work/install.log" 2>&1 \
  || { cat "$work/install.log"; fail "apt-get install"; }
[ -x /usr/bin/edgemux ] || fail "no /usr/bin/edgemux"
getent passwd edgemux >/dev/null || fail "no edgemux user"
[ "$(stat -c %U:%G:%a /etc/edgemux)" = "root:edgemux:750" ] || fail "/etc/edgemux is $(stat -c %U:%G:%a /etc/edgemux)"
if ldd /usr/bin/edgemux | grep -q "not found\|libswift"; then ldd /usr/bin/edgemux; fail "libraries"; fi
edgemux check --no-files --config /etc/edgemux/edgemux.yaml >/dev/null || fail "the shipped config does not check"
verify="$(systemd-analyze verify /lib/systemd/system/edgemux.service 2>&1)" || { echo "$verify"; fail "systemd-analyze verify"; }
[ -z "$verify" ] || { echo "$verify"; fail "systemd-analyze verify printed warnings"; }
say "installed: $(edgemux --version), user edgemux, unit verified, exposure $(systemd-analyze security --offline=yes /lib/systemd/system/edgemux.service 2>/dev/null | tail -1 | sed 's/.*: //')"

# A config of the operator's in the installed place: certificates in /etc/edgemux/tls.
bash Certs/gen-test-certs.sh "$work/certs" >/dev/null
install -d -o root -g edgemux -m 0750 /etc/edgemux/tls
install -o root -g edgemux -m 0640 "$work/certs/localhost.pem" "$work/certs/localhost.key" /etc/edgemux/tls/
mkdir -p "$work/www" && echo "served from the package" > "$work/www/index.html"
/usr/bin/python3 -m http.server --bind 127.0.0.1 0 --directory "$work/www" > "$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "Serving HTTP" "$work/backend.log" && break; sleep 0.1; done
backend_port="$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/backend.log" | head -1)"
[ -n "$backend_port" ] || fail "backend did not start: $(cat "$work/backend.log")"
port=443
if ss -Hltn "sport = :443" | grep -q .; then port=8443; say "port 443 taken here: using $port"; fi
cat > /etc/edgemux/edgemux.yaml <<YAML
access_log: stdout
listeners:
  - name: public
    listen: 127.0.0.1:$port
    tls:
      certificates: [{ cert: /etc/edgemux/tls/localhost.pem, key: /etc/edgemux/tls/localhost.key }]
    routes:
      - { name: web, backend: web }
backends:
  web: { endpoints: ["127.0.0.1:$backend_port"] }
YAML
edgemux check --config /etc/edgemux/edgemux.yaml >/dev/null || fail "check of the test config"

# As the unit runs it: the edgemux user, CAP_NET_BIND_SERVICE only, no new privileges.
setpriv --reuid edgemux --regid edgemux --init-groups --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
  --bounding-set=-all,+net_bind_service --no-new-privs \
  /usr/bin/edgemux run --config /etc/edgemux/edgemux.yaml > "$work/edgemux.log" 2>&1 &
edgemux_pid=$!
pids+=("$edgemux_pid")
for _ in $(seq 100); do grep -q "listener 'public'" "$work/edgemux.log" && break; sleep 0.1; done
got="$(curl -sS --max-time 10 --cacert "$work/certs/ca.pem" --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/")" \
  || { cat "$work/edgemux.log"; fail "curl through the installed edgemux"; }
[ "$got" = "served from the package" ] || fail "answer: $got"
[ "$(ps -o user= -p "$edgemux_pid")" = "edgemux" ] || fail "not running as edgemux"
kill -HUP "$edgemux_pid"
for _ in $(seq 50); do grep -q "reloaded config" "$work/edgemux.log" && break; sleep 0.1; done
grep -q "reloaded config" "$work/edgemux.log" || { cat "$work/edgemux.log"; fail "reload"; }
kill -TERM "$edgemux_pid"
status=0; wait "$edgemux_pid" || status=$?
[ "$status" -eq 0 ] || { cat "$work/edgemux.log"; fail "exit status $status after SIGTERM"; }
say "ran as user edgemux on 127.0.0.1:$port from /usr/bin and /etc/edgemux: served, reloaded, drained (exit 0)"

DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq edgemux > "$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purge"; }
[ ! -e /usr/bin/edgemux ] && [ ! -e /lib/systemd/system/edgemux.service ] || fail "files left after purge"
say "purged"
