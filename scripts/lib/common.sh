# Shared helpers for .ci/run and scripts/test. Sourced, not executed.
# Everything here is test/CI set-up: nothing in this folder ends up in the product image.

# Repository root and the git-ignored cache folder (override with BOTTLE_CACHE).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${BOTTLE_CACHE:-$REPO_ROOT/.cache}"
# The pinned Claude Code release (scripts/claude-code.env is the one source of truth).
# shellcheck source=../claude-code.env
. "$REPO_ROOT/scripts/claude-code.env"
MUSL_TARGET=x86_64-unknown-linux-musl

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# stage NAME CMD...: runs CMD, prints its wall time, records it for the summary.
STAGE_SUMMARY=()
stage() {
    local name="$1"; shift
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    log "=== stage: $name"
    "$@" || rc=$?
    t1=$(date +%s.%N)
    local dt; dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    STAGE_SUMMARY+=("$(printf '%-28s %8ss  %s' "$name" "$dt" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
    log "=== stage: $name took ${dt}s (exit $rc)"
    return $rc
}
print_stage_summary() {
    local line
    printf '\n%-28s %9s\n' "stage" "seconds" >&2
    for line in "${STAGE_SUMMARY[@]}"; do printf '%s\n' "$line" >&2; done
}

# The intercepting CA(s) this machine's registries sit behind, as one PEM bundle for Node/npm.
# Only ever handed to test/CI tooling; never copied into an image.
ca_bundle() {
    local out="$CACHE/ca-bundle.pem"
    mkdir -p "$CACHE"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cat /usr/local/share/ca-certificates/*.crt >"$out.tmp" && mv "$out.tmp" "$out"
        echo "$out"
    fi
}

# Where the pinned Claude Code lives once installed.
claude_native_bin() { echo "$CACHE/claude/node_modules/@anthropic-ai/claude-code-linux-x64/claude"; }
claude_tarball() { echo "$CACHE/claude-pack/anthropic-ai-claude-code-linux-x64-$CLAUDE_CODE_VERSION.tgz"; }
