# bottle-init + Claude Code: bottle-init is PID 1, keeps the credential, runs claude as uid 1000.
#
#   docker build -t claude-bottle .
#   docker run -it --rm -e CLAUDE_CODE_OAUTH_TOKEN -v "$PWD:/workspace" claude-bottle
#
#   docker build --platform linux/arm64 -t claude-bottle .   cross-builds arm64 on an amd64 host
#   docker build --target bottle-init -t bottle-init .       an image holding only /bottle-init,
#                                                            for COPY --from= in your own image
#
# Needs BuildKit (the default of Docker >= 23 and Docker Desktop; DOCKER_BUILDKIT=1 on 20.10).
# Builds for linux/amd64 and linux/arm64. The Rust stage runs on the build machine's platform
# and cross-compiles when the target differs, so an arm64 image builds at native speed on amd64.
#
# Build arguments (defaults: the public images and the pin in scripts/claude-code.env):
#   RUST_IMAGE            Debian-based image with rustup and cargo           (rust:1-bookworm)
#   BASE_IMAGE            Debian-based runtime image                         (debian:bookworm-slim)
#   RUST_PLATFORM         platform the Rust stage runs on                    ($BUILDPLATFORM)
#   CLAUDE_CODE_VERSION   Claude Code release        (empty: CLAUDE_CODE_VERSION in scripts/claude-code.env)
#   CLAUDE_CODE_INTEGRITY npm's dist.integrity of the target's platform package at that version
#                         (empty: the pinned one; required with another version)
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_PLATFORM=$BUILDPLATFORM

# --- the commit, for `bottle-init --version` --------------------------------------------------
# Only this stage sees .git; the Rust stage copies its one-line result, whose content (not the
# .git files' timestamps) decides whether the cargo build reruns. No .git: no commit.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS commit
COPY .gi[t] /src/.git/
RUN (git -C /src log -1 --format='%h %cs' 2>/dev/null || true) >/commit

# --- bottle-init: a static musl binary for the target architecture ---------------------------
FROM --platform=${RUST_PLATFORM} ${RUST_IMAGE} AS build
ARG TARGETARCH
# The Rust triple comes from the target; the C compiler (ring compiles C) from whether this
# stage runs on the target's architecture (musl-gcc) or cross-compiles (Debian's cross gcc as
# compiler and linker). The stage asks dpkg for its own architecture, so the same steps work
# natively on arm64 (a Mac) and cross from amd64.
RUN set -eu; \
    host="$(dpkg --print-architecture)"; \
    case "$TARGETARCH" in \
        amd64) triple=x86_64-unknown-linux-musl; gnu=x86_64-linux-gnu; cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
        arm64) triple=aarch64-unknown-linux-musl; gnu=aarch64-linux-gnu; cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
        *) echo "bottle-init: error: unsupported target architecture $TARGETARCH; build for linux/amd64 or linux/arm64" >&2; exit 1 ;; \
    esac; \
    if [ "$host" = "$TARGETARCH" ]; then pkgs=musl-tools; cc=musl-gcc; linker=; \
    else pkgs="$cross"; cc="$gnu-gcc"; linker="$gnu-gcc"; fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$triple"; \
    var="$(echo "$triple" | tr 'a-z-' 'A-Z_')"; \
    { echo "TRIPLE=$triple"; echo "export CC_$(echo "$triple" | tr - _)=$cc"; \
      if [ -n "$linker" ]; then echo "export CARGO_TARGET_${var}_LINKER=$linker"; fi; } >/build.env; \
    echo "building $triple on $host with $cc"
WORKDIR /src
# Dependencies in their own layer: only Cargo.toml and Cargo.lock invalidate it.
COPY Cargo.toml Cargo.lock ./
RUN set -eu; . /build.env; \
    mkdir src; echo 'fn main() {}' >src/main.rs; : >src/lib.rs; \
    cargo build --release --locked --target "$TRIPLE"; \
    rm -rf src
COPY build.rs ./
COPY src ./src
COPY --from=commit /commit /commit
# touch: the copied sources keep their (older) timestamps, which cargo would take as built.
RUN set -eu; . /build.env; \
    find src build.rs -type f -exec touch {} +; \
    BOTTLE_INIT_COMMIT="$(cat /commit)" cargo build --release --locked --target "$TRIPLE"; \
    bin="target/$TRIPLE/release/bottle-init"; \
    if readelf -lW "$bin" | grep -q INTERP; then echo "$bin is not static" >&2; exit 1; fi; \
    install -D -m 0755 "$bin" /out/bottle-init

# --- Claude Code: the native binary from npm's platform package (no Node.js needed) ----------
# Downloaded on the build machine's platform, checked against the pinned sha512 integrity.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS claude-code
ARG TARGETARCH
ARG CLAUDE_CODE_VERSION=
ARG CLAUDE_CODE_INTEGRITY=
COPY scripts/claude-code.env /claude-code.env
RUN set -eu; \
    arg_version="$CLAUDE_CODE_VERSION"; arg_integrity="$CLAUDE_CODE_INTEGRITY"; \
    . /claude-code.env; \
    case "$TARGETARCH" in \
        amd64) pkg=claude-code-linux-x64; pinned="$CLAUDE_CODE_INTEGRITY_X64" ;; \
        arm64) pkg=claude-code-linux-arm64; pinned="$CLAUDE_CODE_INTEGRITY_ARM64" ;; \
        *) echo "bottle-init: error: no Claude Code package for $TARGETARCH; build for linux/amd64 or linux/arm64" >&2; exit 1 ;; \
    esac; \
    version="${arg_version:-$CLAUDE_CODE_VERSION}"; \
    if [ -n "$arg_integrity" ]; then integrity="$arg_integrity"; \
    elif [ "$version" = "$CLAUDE_CODE_VERSION" ]; then integrity="$pinned"; \
    else echo "bottle-init: error: CLAUDE_CODE_VERSION=$version is not the pinned $CLAUDE_CODE_VERSION, so its integrity is unknown;" \
              "pass --build-arg CLAUDE_CODE_INTEGRITY=\$(npm view @anthropic-ai/$pkg@$version dist.integrity), or run scripts/update-claude-code $version" >&2; exit 1; fi; \
    tgz=/tmp/claude-code.tgz; \
    curl -fsSL --retry 3 -o "$tgz" "https://registry.npmjs.org/@anthropic-ai/$pkg/-/$pkg-$version.tgz"; \
    want="$(printf '%s' "${integrity#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"; \
    got="$(sha512sum "$tgz" | cut -d' ' -f1)"; \
    if [ "$want" != "$got" ]; then \
        echo "bottle-init: error: $pkg-$version.tgz does not match its integrity $integrity;" \
             "check it with: npm view @anthropic-ai/$pkg@$version dist.integrity" >&2; \
        exit 1; \
    fi; \
    mkdir /claude-code; \
    tar -xzf "$tgz" -C /claude-code --strip-components=1 package/claude; \
    echo "$version" >/claude-code/version

# --- the drop-in: only /bottle-init, for `COPY --from=bottle-init /bottle-init /bottle-init` --
FROM scratch AS bottle-init
COPY --from=build /out/bottle-init /bottle-init
ENTRYPOINT ["/bottle-init"]

# --- the image --------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# What claude needs to be useful: git (it calls git constantly), CA roots for the proxy's and
# tools' TLS, a shell, ps (claude runs `ps aux`), less, ssh for git remotes, nft for allowlist.
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        bash ca-certificates git less openssh-client procps nftables; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --create-home --uid 1000 --user-group --shell /bin/bash claude; \
    mkdir -p /workspace; \
    chown claude:claude /workspace
COPY --from=claude-code /claude-code/claude /usr/local/bin/claude
# The binary runs on the target (under emulation when cross-building) and is the pinned release.
RUN --mount=type=bind,from=claude-code,source=/claude-code/version,target=/tmp/claude-code-version \
    set -eu; \
    home="$(mktemp -d)"; \
    got="$(HOME="$home" DISABLE_AUTOUPDATER=1 claude --version)"; \
    rm -rf "$home"; \
    case "$got" in \
        "$(cat /tmp/claude-code-version) "*) echo "claude: $got" ;; \
        *) echo "bottle-init: error: claude --version says '$got', expected $(cat /tmp/claude-code-version)" >&2; exit 1 ;; \
    esac
COPY --from=bottle-init /bottle-init /bottle-init
WORKDIR /workspace
# bottle-init must start as root: it keeps the credential in a process uid 1000 cannot read
# and drops to uid 1000 (BOTTLE_USER) for the command.
USER root
ENTRYPOINT ["/bottle-init"]
CMD ["claude"]
