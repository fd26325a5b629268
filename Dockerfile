# bottle-init + Claude Code: bottle-init is PID 1, keeps the credential, runs claude as uid 1000.
#
#   docker build -t claude-bottle .
#   docker run -it --rm -e CLAUDE_CODE_OAUTH_TOKEN -v "$PWD:/workspace" claude-bottle
#
# Build arguments (defaults are the public images; the test suite passes locally built ones):
#   RUST_IMAGE            image with cargo/rustup for the build stage      (rust:1-bookworm)
#   BASE_IMAGE            Debian-based runtime image                       (debian:bookworm-slim)
#   CLAUDE_CODE_VERSION   pinned Claude Code release                       (2.1.332, from scripts/claude-code.env)
#   CLAUDE_CODE_INTEGRITY npm's dist.integrity of @anthropic-ai/claude-code-linux-x64 at that
#                         version: `npm view @anthropic-ai/claude-code-linux-x64@VERSION dist.integrity`
#   BOTTLE_INIT_BIN       optional: path, inside the build context, of a prebuilt static bottle-init
#                         (skips cargo; the tests use the binary they just built and tested)
#   CLAUDE_CODE_TARBALL   optional: path, inside the build context, of the npm tarball
#                         (skips the download; its integrity is still checked)
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

# --- bottle-init: a static musl binary -------------------------------------------------------
FROM ${RUST_IMAGE} AS bottle-init
ARG BOTTLE_INIT_BIN=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "$BOTTLE_INIT_BIN" ]; then \
        install -m 0755 "$BOTTLE_INIT_BIN" /bottle-init; \
    else \
        rustup target add x86_64-unknown-linux-musl; \
        cargo build --release --locked --target x86_64-unknown-linux-musl; \
        install -m 0755 target/x86_64-unknown-linux-musl/release/bottle-init /bottle-init; \
    fi

# --- Claude Code: the native binary from npm's platform package (no Node.js needed) ----------
FROM ${BASE_IMAGE} AS claude-code
ARG CLAUDE_CODE_VERSION=2.1.332
ARG CLAUDE_CODE_INTEGRITY=sha512-f4JWhzwYutJIHScC7/dYOPX6s28tt7ZADhsOi8zwOHq5fFPEuUeChh2NMfinSg0GrUckYxaeebC4h0DqiKzLcw==
ARG CLAUDE_CODE_TARBALL=
COPY . /ctx
RUN set -eu; \
    tgz=/tmp/claude-code.tgz; \
    if [ -n "$CLAUDE_CODE_TARBALL" ]; then \
        cp "/ctx/$CLAUDE_CODE_TARBALL" "$tgz"; \
    else \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates; \
        curl -fsSL -o "$tgz" \
          "https://registry.npmjs.org/@anthropic-ai/claude-code-linux-x64/-/claude-code-linux-x64-${CLAUDE_CODE_VERSION}.tgz"; \
    fi; \
    want="$(printf '%s' "${CLAUDE_CODE_INTEGRITY#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"; \
    got="$(sha512sum "$tgz" | cut -d' ' -f1)"; \
    if [ "$want" != "$got" ]; then \
        echo "claude-code-linux-x64-${CLAUDE_CODE_VERSION}.tgz does not match CLAUDE_CODE_INTEGRITY;" \
             "set it to: npm view @anthropic-ai/claude-code-linux-x64@${CLAUDE_CODE_VERSION} dist.integrity" >&2; \
        exit 1; \
    fi; \
    mkdir /claude-code; \
    tar -xzf "$tgz" -C /claude-code --strip-components=1 package/claude; \
    /claude-code/claude --version | grep -q "^${CLAUDE_CODE_VERSION} "

# --- the image --------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# What claude needs to be useful: git (it calls git constantly), CA roots for the proxy's and
# tools' TLS, a shell, ps (claude runs `ps aux`), less, ssh for git remotes.
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        bash ca-certificates git less openssh-client procps nftables; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --create-home --uid 1000 --user-group --shell /bin/bash claude; \
    mkdir -p /workspace; \
    chown claude:claude /workspace
COPY --from=claude-code /claude-code/claude /usr/local/bin/claude
COPY --from=bottle-init /bottle-init /bottle-init
WORKDIR /workspace
# bottle-init must start as root: it keeps the credential in a process uid 1000 cannot read
# and drops to uid 1000 (BOTTLE_USER) for the command.
USER root
ENTRYPOINT ["/bottle-init"]
CMD ["claude"]
