# Installs @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION into $CACHE/claude and keeps the native
# package tarball (for the Docker build context) in $CACHE/claude-pack. Idempotent.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_claude() {
    local bin; bin="$(claude_native_bin)"
    local bundle; bundle="$(ca_bundle || true)"
    if [ -n "$bundle" ]; then export NODE_EXTRA_CA_CERTS="$bundle"; fi
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "^$CLAUDE_CODE_VERSION "; then
        log "claude $CLAUDE_CODE_VERSION already installed at $bin"
    else
        command -v npm >/dev/null || die "npm is missing (install Node.js 18+ with npm)"
        mkdir -p "$CACHE/claude"
        # --prefix keeps it out of the global tree; the native binary arrives as the
        # optional dependency @anthropic-ai/claude-code-linux-x64.
        npm install --prefix "$CACHE/claude" --no-audit --no-fund --no-save \
            "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
        [ -x "$bin" ] || die "npm install did not produce the native binary $bin"
        "$bin" --version | grep -q "^$CLAUDE_CODE_VERSION " \
            || die "$bin --version is not $CLAUDE_CODE_VERSION: $("$bin" --version 2>&1)"
    fi
    local tgz; tgz="$(claude_tarball)"
    if [ ! -s "$tgz" ]; then
        mkdir -p "$CACHE/claude-pack"
        # Served from npm's cache after the install above; npm checks its integrity.
        (cd "$CACHE/claude-pack" && npm pack --silent \
            "@anthropic-ai/claude-code-linux-x64@$CLAUDE_CODE_VERSION" >/dev/null)
        [ -s "$tgz" ] || die "npm pack did not produce $tgz"
    fi
    # The integrity npm recorded, so the Dockerfile's pinned value can be checked against it.
    (cd "$CACHE/claude-pack" && sha512sum "$(basename "$tgz")" >"$tgz.sha512")
    log "claude: $("$bin" --version) ($bin); tarball $tgz"
}
