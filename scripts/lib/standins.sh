# Local stand-ins for the public images the Dockerfile names (rust:1-bookworm,
# debian:bookworm-slim), served as multi-platform manifests (linux/amd64 + linux/arm64) by a
# local registry on 127.0.0.1 that the private dockerd uses as its Docker Hub mirror. So the
# tests run the README's exact `docker build` with the Dockerfile's default FROM lines.
# Sourced by scripts/test (after docker.sh). Everything here is test set-up.
#
# - debian:bookworm-slim: `debootstrap --variant=minbase bookworm` (arm64 under qemu-user).
# - rust:1-bookworm: the same plus gcc, libc6-dev, make, curl, git, ca-certificates and
#   `rustup-init` stable, like the public image (no musl tools); arm64 from the debian arm64
#   root file system, with the toolchain unpacked on the host (see standin_rust_rootfs). The machine's intercepting CA
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
# Both for both: the final stage runs on the target platform, the Rust stage on the build
# platform, and on arm64 itself for the native build (--build-arg RUST_PLATFORM=linux/arm64,
# tests/docker_arm64.rs). BOTTLE_STANDIN_RUST_ARCHS=amd64 leaves the arm64 rust stand-in out.
STANDIN_DEBIAN_ARCHS="${BOTTLE_STANDIN_DEBIAN_ARCHS:-amd64 arm64}"
STANDIN_RUST_ARCHS="${BOTTLE_STANDIN_RUST_ARCHS:-amd64 arm64}"
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
# (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, minimal profile, stable) on
# Debian bookworm with gcc, libc6-dev, make, curl, git, ca-certificates (no musl tools).
# amd64 runs natively, so it is made the official way (debootstrap --include, rustup-init in a
# chroot). arm64 would run all of that under qemu-user (16-20 min here, most of it dpkg and
# rustup unpacking emulated), so it starts from the debian arm64 stand-in's root file system,
# adds the packages with apt in the chroot (dpkg's unsafe-io for that step only, no fsync per
# file), and installs the same toolchain from the host: the amd64 rustup-init with
# --default-host aarch64-unknown-linux-gnu downloads and unpacks the aarch64 toolchain natively,
# then the aarch64 rustup binary replaces the amd64 one as rustup and every proxy (cargo,
# rustc, ...), so the image holds nothing but aarch64 code, as the public image does.
STANDIN_RUST_PACKAGES="gcc libc6-dev make curl git ca-certificates xz-utils"

# The machine's intercepting CA, as a user's machine would have it: the rust stand-in only.
standin_rust_ca() {
    local dir="$1"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    fi
}

# in_chroot DIR CMD: CMD (sh) in DIR with /proc and /dev, the stand-in's environment.
in_chroot() {
    unshare --mount --fork sh -c '
        set -eu
        mount -t proc proc "$1/proc"
        mount --bind /dev "$1/dev"
        chroot "$1" env -i PATH=/usr/local/cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo HOME=/root \
            DEBIAN_FRONTEND=noninteractive sh -eu -c "$2"
    ' sh "$1" "$2"
}

standin_rust_rootfs() {
    local arch="$1"
    local out="$CACHE/standin-rust-$arch.tar.zst"
    [ -s "$out" ] && return 0
    case "$arch" in
        amd64) standin_rust_rootfs_native "$out" ;;
        arm64) standin_rust_rootfs_arm64 "$out" ;;
        *) log "no rust stand-in recipe for $arch"; return 1 ;;
    esac
}

standin_rust_rootfs_native() {
    local out="$1" rc=0
    local dir; dir="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    standin_debootstrap amd64 "$dir" --include="${STANDIN_RUST_PACKAGES// /,}" \
        || { rm -rf "$dir"; return 1; }
    standin_rust_ca "$dir"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    log "rustup-init stable (x86_64-unknown-linux-gnu) in the rust stand-in"
    in_chroot "$dir" "
        update-ca-certificates >/dev/null
        curl -fsSL --retry 3 -o /tmp/rustup-init https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init
        chmod +x /tmp/rustup-init
        /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain stable
        chmod -R a+w /usr/local/rustup /usr/local/cargo
        rustc --version; cargo --version" >"$CACHE/rustup-amd64.log" 2>&1 \
        || { tail -n 30 "$CACHE/rustup-amd64.log" >&2; rm -rf "$dir"; return 1; }
    tail -n 2 "$CACHE/rustup-amd64.log" >&2
    standin_pack "$dir" "$out" || rc=1
    rm -rf "$dir"
    return $rc
}

# timed LABEL CMD...: CMD, then its wall time in the log (the arm64 recipe's steps are measured).
timed() {
    local label="$1" t0 rc=0; shift
    t0=$(date +%s)
    "$@" || rc=$?
    if [ $rc = 0 ]; then log "$label: $(( $(date +%s) - t0 )) s"
    else log "$label: failed (exit $rc) after $(( $(date +%s) - t0 )) s"; fi
    return $rc
}

standin_rust_rootfs_arm64() {
    local out="$1" rc=0
    local log_file="$CACHE/rustup-arm64.log"
    : >"$log_file"
    exec 4>>"$log_file"
    timed "arm64 rust stand-in: debian arm64 root file system" standin_debian_rootfs arm64 || return 1
    local dir; dir="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    timed "arm64 rust stand-in: unpack" tar_unpack "$CACHE/standin-debian-arm64.tar.zst" "$dir" &&
        timed "arm64 rust stand-in: apt-get install (qemu)" to_log arm64_rust_apt "$dir" &&
        timed "arm64 rust stand-in: rustup-init on the host" to_log arm64_rust_toolchain "$dir" &&
        timed "arm64 rust stand-in: check (qemu)" to_log arm64_rust_check "$dir" &&
        timed "arm64 rust stand-in: pack" standin_pack "$dir" "$out" || rc=1
    exec 4>&-
    if [ $rc = 0 ]; then tail -n 4 "$log_file" >&2; else tail -n 30 "$log_file" >&2; fi
    rm -rf "$dir"
    return $rc
}

# to_log CMD...: CMD with its output in the recipe's log (fd 4), not on the terminal.
to_log() { "$@" >&4 2>&4; }

tar_unpack() { zstd -dc "$1" | tar --numeric-owner -xp -C "$2"; }

arm64_rust_apt() {
    local dir="$1"
    mkdir -p "$dir/usr/local/share/ca-certificates"
    standin_rust_ca "$dir"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    echo force-unsafe-io >"$dir/etc/dpkg/dpkg.cfg.d/standin-unsafe-io"
    in_chroot "$dir" "
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $STANDIN_RUST_PACKAGES >/dev/null
        update-ca-certificates >/dev/null"
    local rc=$?
    rm -f "$dir/etc/dpkg/dpkg.cfg.d/standin-unsafe-io"
    return $rc
}

# The toolchain for aarch64-unknown-linux-gnu into DIR's /usr/local, made by amd64 rustup-init
# on the host (native download and unpacking); then aarch64 rustup as rustup and its proxies.
arm64_rust_toolchain() {
    local dir="$1" tmp bin p
    tmp="$(mktemp -d "$CACHE/rustup-init.XXXXXX")"
    local dist=https://static.rust-lang.org/rustup/dist
    curl -fsSL --retry 3 -o "$tmp/rustup-init-x86_64" "$dist/x86_64-unknown-linux-gnu/rustup-init" &&
        curl -fsSL --retry 3 -o "$tmp/rustup-init-aarch64" "$dist/aarch64-unknown-linux-gnu/rustup-init" &&
        chmod +x "$tmp"/rustup-init-* &&
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$tmp" \
            RUSTUP_HOME="$dir/usr/local/rustup" CARGO_HOME="$dir/usr/local/cargo" \
            "$tmp/rustup-init-x86_64" -y --no-modify-path --profile minimal \
            --default-toolchain stable --default-host aarch64-unknown-linux-gnu \
        || { rm -rf "$tmp"; return 1; }
    bin="$dir/usr/local/cargo/bin"
    # rustup-init installs rustup and hard-links each proxy to it; the same with aarch64 rustup.
    install -m 0755 "$tmp/rustup-init-aarch64" "$bin/rustup.new"
    for p in "$bin"/*; do
        case "$p" in "$bin/rustup.new") continue ;; esac
        [ "$p" -ef "$bin/rustup" ] || { echo "$p is not a rustup proxy"; rm -rf "$tmp"; return 1; }
    done
    for p in "$bin"/*; do
        case "$p" in "$bin/rustup.new"|"$bin/rustup") continue ;; esac
        ln -f "$bin/rustup.new" "$p"
    done
    mv -f "$bin/rustup.new" "$bin/rustup"
    chmod -R a+w "$dir/usr/local/rustup" "$dir/usr/local/cargo"
    rm -rf "$tmp"
}

# Under qemu in the chroot: every tool is aarch64 and answers as the public image's would.
arm64_rust_check() {
    local dir="$1" f
    for f in "$dir"/usr/local/cargo/bin/* "$dir"/usr/local/rustup/toolchains/*/bin/rustc; do
        file -bL "$f" | grep -q 'ARM aarch64' || { echo "$f is not aarch64: $(file -bL "$f")"; return 1; }
    done
    in_chroot "$dir" "
        rustup --version 2>/dev/null; cargo --version; rustc -vV | grep -x 'host: aarch64-unknown-linux-gnu'
        rustc --version; gcc -dumpmachine"
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

# Both stand-ins. The arm64 rust root file system (apt under qemu, minutes when cold) is made
# in the background from the debian arm64 one while the rest is made and pushed.
standin_images() {
    registry_up || { log "the registry is not running"; return 1; }
    local arm64_rust=""
    if [[ " $STANDIN_RUST_ARCHS " == *" arm64 "* ]] && ! manifest_complete "$STANDIN_RUST" "$STANDIN_RUST_ARCHS" \
        && [ ! -s "$CACHE/standin-rust-arm64.tar.zst" ]; then
        standin_debian_rootfs arm64 || return 1
        standin_rust_rootfs arm64 &
        arm64_rust=$!
    fi
    push_standin "$STANDIN_DEBIAN" debian "$STANDIN_DEBIAN_ARCHS" 'CMD ["bash"]' || return 1
    if [ -n "$arm64_rust" ]; then
        if [[ " $STANDIN_RUST_ARCHS " == *" amd64 "* ]]; then standin_rust_rootfs amd64 || return 1; fi
        wait "$arm64_rust" || { log "the arm64 rust stand-in failed"; return 1; }
    fi
    push_standin "$STANDIN_RUST" rust "$STANDIN_RUST_ARCHS" \
        'ENV RUSTUP_HOME=/usr/local/rustup' 'ENV CARGO_HOME=/usr/local/cargo' \
        'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'CMD ["bash"]' || return 1
}
