# Local stand-ins for the public images the Dockerfile names (rust:1-bookworm,
# debian:bookworm-slim), served as multi-platform manifests (linux/amd64 + linux/arm64) by a
# local registry on 127.0.0.1 that the private dockerd uses as its Docker Hub mirror. So the
# tests run the README's exact `docker build` with the Dockerfile's default FROM lines.
# Sourced by scripts/test (after docker.sh). Everything here is test set-up.
#
# - debian:bookworm-slim: `debootstrap --variant=minbase bookworm` (arm64 under qemu-user).
# - rust:1-bookworm: the same plus gcc, libc6-dev, make, curl, git, ca-certificates and
#   `rustup-init` stable, like the public image (no musl tools). The machine's intercepting CA
#   goes into THIS image's trust store only (a user's machine that reaches the registries),
#   never into the debian stand-in, so the product image cannot inherit it.
# Root file systems are cached as $CACHE/standin-NAME-ARCH.tar.zst; the registry's storage
# lives in $CACHE/registry, so a rerun pushes nothing.

REGISTRY_DIR="$CACHE/registry"
REGISTRY_PIDFILE="$DOCKER_RUN/registry.pid"
# A port per checkout (41000-41999), so engineers' registries never collide.
REGISTRY_PORT="${BOTTLE_REGISTRY_PORT:-$((41000 + 0x${DOCKER_ID:0:4} % 1000))}"
REGISTRY="127.0.0.1:$REGISTRY_PORT"
REGISTRY_PID=""
# debian:bookworm-slim for both (the final stage runs on the target platform); rust:1-bookworm
# only for amd64 by default, since the Rust stage runs on the build platform. An arm64 rust
# stand-in (about 20 min under qemu here) is only needed to try a native arm64 build
# (--build-arg RUST_PLATFORM=linux/arm64): BOTTLE_STANDIN_RUST_ARCHS="amd64 arm64".
STANDIN_DEBIAN_ARCHS="${BOTTLE_STANDIN_DEBIAN_ARCHS:-amd64 arm64}"
STANDIN_RUST_ARCHS="${BOTTLE_STANDIN_RUST_ARCHS:-amd64}"
# The public tags the stand-ins answer for (Docker Hub's library/ namespace).
STANDIN_RUST=library/rust:1-bookworm
STANDIN_DEBIAN=library/debian:bookworm-slim

registry_up() { curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; }

# Starts the registry unless ours already answers (its pid file names a live process).
registry_start() {
    command -v docker-registry >/dev/null || { log "docker-registry is missing (apt-get install docker-registry)"; return 1; }
    mkdir -p "$DOCKER_RUN" "$REGISTRY_DIR/data"
    if [ -s "$REGISTRY_PIDFILE" ] && kill -0 "$(cat "$REGISTRY_PIDFILE")" 2>/dev/null && registry_up; then
        log "reusing the registry $(cat "$REGISTRY_PIDFILE") on $REGISTRY"
        return 0
    fi
    if registry_up; then
        log "$REGISTRY answers but is not this checkout's registry; set BOTTLE_REGISTRY_PORT to a free port"
        return 1
    fi
    cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $REGISTRY_DIR/data }
  delete: { enabled: true }
http: { addr: $REGISTRY }
EOF
    docker-registry serve "$REGISTRY_DIR/config.yml" >"$REGISTRY_DIR/registry.log" 2>&1 &
    REGISTRY_PID=$!
    echo "$REGISTRY_PID" >"$REGISTRY_PIDFILE"
    local i
    for i in $(seq 1 40); do
        registry_up && { log "registry $REGISTRY_PID up on $REGISTRY"; return 0; }
        kill -0 "$REGISTRY_PID" 2>/dev/null || break
        sleep 0.25
    done
    log "the registry did not come up; last lines of $REGISTRY_DIR/registry.log:"
    tail -n 20 "$REGISTRY_DIR/registry.log" >&2
    return 1
}

# Stops the registry this script started (by its pid only).
registry_stop() {
    [ -n "$REGISTRY_PID" ] || return 0
    kill -TERM "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
    rm -f "$REGISTRY_PIDFILE"
    REGISTRY_PID=""
}

# manifest_complete NAME:TAG ARCHS: the registry holds NAME:TAG as a manifest list with each.
manifest_complete() {
    local name="${1%%:*}" tag="${1#*:}" archs="$2" list a
    list="$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        "http://$REGISTRY/v2/$name/manifests/$tag" 2>/dev/null)" || return 1
    for a in $archs; do
        printf '%s' "$list" | grep -q "\"architecture\": *\"$a\"" || return 1
    done
}

# debootstrap ARCH DIR [--include=...]: a minbase bookworm with the updates and security suites.
standin_debootstrap() {
    local arch="$1" dir="$2"; shift 2
    local log_file="$CACHE/debootstrap-$arch.log"
    log "debootstrap --arch=$arch --variant=minbase $* bookworm"
    debootstrap --arch="$arch" --variant=minbase "$@" bookworm "$dir" http://deb.debian.org/debian \
        >"$log_file" 2>&1 || { tail -n 30 "$log_file" >&2; return 1; }
    cat >"$dir/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
}

standin_pack() {
    local dir="$1" out="$2"
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb "$dir"/tmp/*
    : >"$dir/etc/resolv.conf"
    tar --numeric-owner -C "$dir" -c . | zstd -q -T0 -o "$out.tmp" || return 1
    mv "$out.tmp" "$out"
}

# The debian:bookworm-slim stand-in's root file system for ARCH.
standin_debian_rootfs() {
    local arch="$1"
    local out="$CACHE/standin-debian-$arch.tar.zst"
    [ -s "$out" ] && return 0
    local dir; dir="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    standin_debootstrap "$arch" "$dir" && standin_pack "$dir" "$out"
    local rc=$?
    rm -rf "$dir"
    return $rc
}

# The rust:1-bookworm stand-in's root file system for ARCH: the official image's recipe
# (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, minimal profile, stable).
standin_rust_rootfs() {
    local arch="$1"
    local out="$CACHE/standin-rust-$arch.tar.zst"
    [ -s "$out" ] && return 0
    local triple
    case "$arch" in amd64) triple=x86_64-unknown-linux-gnu ;; arm64) triple=aarch64-unknown-linux-gnu ;; esac
    local dir; dir="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    standin_debootstrap "$arch" "$dir" --include=gcc,libc6-dev,make,curl,git,ca-certificates,xz-utils \
        || { rm -rf "$dir"; return 1; }
    # The machine's intercepting CA, as a user's machine would have it: this stand-in only.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    fi
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    log "rustup-init stable ($triple) in the rust stand-in"
    unshare --mount --fork sh -c '
        set -eu
        mount -t proc proc "$1/proc"
        mount --bind /dev "$1/dev"
        chroot "$1" env -i PATH=/usr/local/cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo HOME=/root sh -eu -c "
            update-ca-certificates >/dev/null
            curl -fsSL --retry 3 -o /tmp/rustup-init https://static.rust-lang.org/rustup/dist/$2/rustup-init
            chmod +x /tmp/rustup-init
            /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain stable
            chmod -R a+w /usr/local/rustup /usr/local/cargo
            rustc --version; cargo --version"
    ' sh "$dir" "$triple" >"$CACHE/rustup-$arch.log" 2>&1 \
        || { tail -n 30 "$CACHE/rustup-$arch.log" >&2; rm -rf "$dir"; return 1; }
    tail -n 2 "$CACHE/rustup-$arch.log" >&2
    standin_pack "$dir" "$out"
    local rc=$?
    rm -rf "$dir"
    return $rc
}

# push_standin NAME:TAG KIND ARCHS CHANGES...: imports each arch's root file system, pushes
# it as NAME:TAG-ARCH and publishes NAME:TAG as a manifest list of them.
push_standin() {
    local ref="$1" kind="$2" archs="$3"; shift 3
    if manifest_complete "$ref" "$archs"; then log "registry has $ref ($archs)"; return 0; fi
    local a changes=() amends=()
    for c in "$@"; do changes+=(--change "$c"); done
    for a in $archs; do
        "standin_${kind}_rootfs" "$a" || return 1
        local img="$REGISTRY/$ref-$a" tarball="$CACHE/standin-$kind-$a.tar.zst"
        [ -s "$tarball" ] || { log "$tarball is missing"; return 1; }
        zstd -dc "$tarball" | docker import --platform "linux/$a" "${changes[@]}" - "$img" >/dev/null
        [ "${PIPESTATUS[*]}" = "0 0" ] || { log "importing $tarball failed"; return 1; }
        docker push -q "$img" >/dev/null || return 1
        amends+=(--amend "$img")
    done
    docker manifest rm "$REGISTRY/$ref" >/dev/null 2>&1 || true
    docker manifest create --insecure "$REGISTRY/$ref" "${amends[@]}" >/dev/null || return 1
    for a in $archs; do
        docker manifest annotate --os linux --arch "$a" "$REGISTRY/$ref" "$REGISTRY/$ref-$a" || return 1
    done
    docker manifest push --insecure --purge "$REGISTRY/$ref" >/dev/null || return 1
    manifest_complete "$ref" "$archs" || { log "$ref: the pushed manifest list lacks an arch"; return 1; }
    log "registry serves $ref for $archs"
}

# Both stand-ins.
standin_images() {
    registry_up || { log "the registry is not running"; return 1; }
    push_standin "$STANDIN_DEBIAN" debian "$STANDIN_DEBIAN_ARCHS" 'CMD ["bash"]' || return 1
    push_standin "$STANDIN_RUST" rust "$STANDIN_RUST_ARCHS" \
        'ENV RUSTUP_HOME=/usr/local/rustup' 'ENV CARGO_HOME=/usr/local/cargo' \
        'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'CMD ["bash"]' || return 1
}
