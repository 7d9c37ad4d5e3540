#!/usr/bin/env bash
# Builds Deploy/Dockerfile with podman, unchanged, from base images made here with debootstrap
# (no registry, no Docker engine), then runs the image as a user would:
#   Deploy/container.sh build   the two bases, then the image localhost/edgemux:VERSION (+ :latest)
#   Deploy/container.sh smoke   build, then run it on the host's loopback with a test certificate:
#                               a request through it to a backend, /readyz, podman stop (SIGTERM)
#                               drains and exits 0; prints the image's size and user
# The bases, in .build-container/: a Debian 12 minbase (the runtime stage's RUNTIME_IMAGE, in place
# of debian:bookworm-slim) and the same with the Swift image's build dependencies (SWIFT_IMAGE, in
# place of swift:6.3-bookworm), the toolchain mounted from SWIFT_ROOT (default: the directory above
# the `swift` on PATH) at build time instead of copied in. Where GitHub is reached through a local
# mirror (a git insteadOf in /etc/gitconfig), the mirror is mounted too.
# Run as root (debootstrap, rootful podman); podman, buildah, runc and debootstrap are installed
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(pwd -P)/.build-container
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
if [ -z "${SWIFT_ROOT:-}" ] && swift_bin=$(command -v swift); then
  SWIFT_ROOT=$(dirname "$(dirname "$(dirname "$(readlink -f "$swift_bin")")")")
fi
swift_root=${SWIFT_ROOT:-}
runtime_base=localhost/edgemux-base-runtime:bookworm
builder_base=localhost/edgemux-base-swift:bookworm
# What swift:6.3-bookworm carries beyond a minimal Debian (swift-docker's Dockerfile), and the
# two -dev packages the build stage asks for.
builder_packages=binutils,git,gnupg2,libc6-dev,libcurl4-openssl-dev,libedit2,libgcc-12-dev,libpython3-dev,libsqlite3-0,libstdc++-12-dev,libxml2-dev,libncurses-dev,libz3-dev,pkg-config,tzdata,zlib1g-dev,libssl-dev,libnghttp2-dev,ca-certificates

[ "$(id -u)" -eq 0 ] || { echo "container.sh: run as root (debootstrap and rootful podman)" >&2; exit 2; }
# The toolchain is mounted at /opt/swift in the build stage: its root, not the host's /.
if [ -z "$swift_root" ] || [ "$swift_root" = / ] || [ ! -x "$swift_root/usr/bin/swift" ]; then
  echo "container.sh: no Swift toolchain at '$swift_root' (set SWIFT_ROOT to the folder holding usr/bin/swift)" >&2
  exit 2
fi
missing=()
for p in podman buildah runc debootstrap openssl curl python3 iproute2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Engine settings for hosts like this one: crun refuses hybrid cgroups (v1 with a v2 mount), so
# runc with cgroupfs there; and the container's limits no higher than this process may set.
podman=(podman)
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then podman+=(--runtime runc --cgroup-manager cgroupfs); fi
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")

# What makes debian:bookworm-slim slim (debuerreotype's settings): no documentation, manuals or
# translations, and apt keeps neither its package caches nor downloaded packages.
slim() {
  local root=$1
  # Only ever a folder this script made under $work: never the host's own files.
  case "$(readlink -f "$root")" in
    "$work"/?*) ;;
    *) echo "container.sh: slim: '$root' is not a root made under $work" >&2; exit 1 ;;
  esac
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' 'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/lintian/*' \
    'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    > "$root/etc/dpkg/dpkg.cfg.d/docker"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"'
  printf '%s\n' "DPkg::Post-Invoke { $clean; };" "APT::Update::Post-Invoke { $clean; };" \
    'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' > "$root/etc/apt/apt.conf.d/docker-clean"
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,groff,info,lintian,linda}/* "$root"/var/cache/apt/*.bin
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
}

base() { # base IMAGE DIR PATH [--include=...]
  local image=$1 kind=$2 dir=$work/$2 path=$3
  shift 3
  if "${podman[@]}" image exists "$image"; then return 0; fi
  rm -rf --one-file-system "$dir"
  mkdir -p "$work"
  echo "container.sh: debootstrap bookworm into $dir" >&2
  debootstrap --variant=minbase "$@" bookworm "$dir" "$mirror" >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
  # As debian:bookworm-slim: the updates and security suites too, and what they have applied.
  printf '%s\n' "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security_mirror bookworm-security main" \
    > "$dir/etc/apt/sources.list"
  { chroot "$dir" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get upgrade -y -qq; } >>"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; exit 1; }
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
  [ "$kind" != runtime ] || slim "$dir"
  tar -C "$dir" --numeric-owner -c . | "${podman[@]}" import \
    --change "ENV PATH=$path" \
    --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
  rm -rf --one-file-system "$dir"
}

build() {
  local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  base "$runtime_base" runtime "$path"
  base "$builder_base" swift "/opt/swift/usr/bin:$path" "--include=$builder_packages"
  local mounts=(-v "$swift_root:/opt/swift:ro")
  # A package mirror that git reaches as a local folder (url.FOLDER.insteadOf in the system
  # config) is mounted where the config says; other mirrors need nothing mounted.
  local bases=() b
  while read -r b; do
    b=${b#file://}
    b=${b%/}
    if [ -d "$b" ]; then bases+=("$b"); fi
  done < <(git config --system --get-regexp '^url\..*\.insteadof$' 2>/dev/null | sed 's/^url\.\(.*\)\.insteadof .*/\1/' | sort -u)
  if [ ${#bases[@]} -gt 0 ]; then
    mounts+=(-v "/etc/gitconfig:/etc/gitconfig:ro")
    for b in "${bases[@]}"; do mounts+=(-v "$b:$b:ro"); done
  fi
  local started=$SECONDS
  # --network host: the stages' apt-get reaches the Debian mirror as this host does.
  "${podman[@]}" build --network host "${limits[@]}" "${mounts[@]}" \
    --build-arg "SWIFT_IMAGE=$builder_base" --build-arg "RUNTIME_IMAGE=$runtime_base" \
    -f Deploy/Dockerfile -t localhost/edgemux:latest . >&2
  version=$("${podman[@]}" run --rm --network none "${limits[@]}" localhost/edgemux:latest --version)
  "${podman[@]}" tag localhost/edgemux:latest "localhost/edgemux:$version"
  echo "container.sh: built localhost/edgemux:$version in $((SECONDS - started)) s" >&2
}

smoke() {
  build
  backend_pid="" name=edgemux-smoke-$$
  dir=$(mktemp -d "${TMPDIR:-/tmp}/edgemux-container.XXXXXX")
  cleanup() {
    "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
    [ -z "$backend_pid" ] || kill "$backend_pid" 2>/dev/null || true
    rm -rf "$dir"
  }
  trap cleanup EXIT
  mkdir -p "$dir/config/tls" "$dir/site"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$dir/config/tls/tls.key" -out "$dir/config/tls/tls.crt" 2>/dev/null
  openssl rand 80 > "$dir/config/tls/ticket.key"
  chmod -R a+rX "$dir/config"
  echo "served by the backend behind the container" > "$dir/site/index.html"
  # Three loopback ports in a row that nothing listens on: edgemux, its admin, the backend.
  local port
  for _ in $(seq 20); do
    port=$((20000 + RANDOM % 20000))
    [ -n "$(ss -Htln "( sport = :$port or sport = :$((port + 1)) or sport = :$((port + 2)) )")" ] || break
  done
  /usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$dir/site" "$((port + 2))" >/dev/null 2>&1 &
  backend_pid=$!
  for _ in $(seq 50); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$((port + 2))/" 2>/dev/null; then break; fi
    sleep 0.1
  done
  cat > "$dir/config/edgemux.yaml" <<EOF
workers: 2
access_log: stdout
admin: { listen: 127.0.0.1:$((port + 1)) }
listeners:
  - name: public
    listen: 127.0.0.1:$port
    tls:
      certificates: [{ cert: tls/tls.crt, key: tls/tls.key }]
      ticket_keys: [tls/ticket.key]
    routes: [{ name: web, backend: web }]
backends:
  web: { endpoints: [127.0.0.1:$((port + 2))] }
EOF
  # The image as a pod runs it: its own user, a read-only root filesystem, no capabilities.
  "${podman[@]}" run -d --name "$name" --network host "${limits[@]}" --read-only --cap-drop ALL \
    -v "$dir/config:/etc/edgemux:ro" localhost/edgemux:latest >/dev/null
  local ok=""
  for _ in $(seq 50); do
    if curl -fsS "http://127.0.0.1:$((port + 1))/readyz" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { "${podman[@]}" logs "$name" >&2; echo "container.sh: not ready" >&2; exit 1; }
  local body
  body=$(curl -fsS --cacert "$dir/config/tls/tls.crt" --resolve "localhost:$port:127.0.0.1" --http2 "https://localhost:$port/")
  [ "$body" = "served by the backend behind the container" ] || { echo "container.sh: unexpected answer: $body" >&2; exit 1; }
  echo "container.sh: HTTP/2 request through the container: ok" >&2
  "${podman[@]}" stop -t 40 "$name" >/dev/null
  local status user size
  status=$("${podman[@]}" inspect -f '{{.State.ExitCode}}' "$name")
  user=$("${podman[@]}" image inspect -f '{{.Config.User}}' localhost/edgemux:latest)
  size=$("${podman[@]}" image inspect -f '{{.Size}}' localhost/edgemux:latest)
  "${podman[@]}" logs "$name" 2>&1 | grep -E '"route" *: *"web"|draining|drained' | head -3 >&2 || true
  [ "$status" = 0 ] || { echo "container.sh: exit status $status after SIGTERM" >&2; exit 1; }
  echo "container.sh: ok: user $user, image $((size / 1000000)) MB, SIGTERM drained and exited 0" >&2
}

case "${1:-}" in
  build) build ;;
  smoke) smoke ;;
  *) echo "usage: Deploy/container.sh build|smoke" >&2; exit 2 ;;
esac
