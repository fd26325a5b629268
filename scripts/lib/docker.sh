# A private Docker engine for the tests: its own socket, data root, exec root and pid file, so
# it never touches another engine on the machine. Sourced by scripts/test.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Short, per-checkout paths: unix socket paths are limited to 108 bytes.
DOCKER_ID="$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-10)"
DOCKER_RUN="/run/bottle-test/$DOCKER_ID"
DOCKER_SOCK="$DOCKER_RUN/docker.sock"
DOCKER_PIDFILE="$DOCKER_RUN/dockerd.pid"
DOCKER_DATA="$CACHE/docker"
DOCKER_LOG="$CACHE/dockerd.log"
DOCKERD_PID=""
# Debian's 20.10 client: it drives the daemon's built-in BuildKit (DOCKER_BUILDKIT=1). A newer
# client elsewhere on PATH (e.g. /usr/local/bin) may lack the buildx plugin it then needs.
DOCKER_CLI="$(command -v /usr/bin/docker || command -v docker || echo docker)"
export DOCKER_CLI DOCKER_BUILDKIT=1
docker() { "$DOCKER_CLI" "$@"; }
# shellcheck source=standins.sh
. "$(dirname "${BASH_SOURCE[0]}")/standins.sh"

# Starts dockerd unless one already answers on our private socket. Sets DOCKER_HOST.
docker_start() {
    export DOCKER_HOST="unix://$DOCKER_SOCK"
    command -v dockerd >/dev/null || { log "dockerd is missing (apt-get install docker.io)"; return 1; }
    command -v docker >/dev/null || { log "docker CLI is missing (apt-get install docker.io)"; return 1; }
    if docker info >/dev/null 2>&1; then
        # It must use this checkout's registry as its Docker Hub mirror (see standins.sh).
        case "$(docker info --format '{{.RegistryConfig.Mirrors}}')" in
            *"$REGISTRY"*) log "reusing the private dockerd on $DOCKER_SOCK"; return 0 ;;
        esac
        log "the dockerd on $DOCKER_SOCK does not mirror Docker Hub to $REGISTRY; stop it first"
        return 1
    fi
    mkdir -p "$DOCKER_RUN" "$DOCKER_DATA"
    # No bridge and no iptables: containers only ever get loopback; the host's firewall
    # and routes stay untouched. Docker Hub is mirrored by the local registry of stand-ins, so
    # the Dockerfile's default FROM images resolve here, and nothing asks the real Hub.
    dockerd --iptables=false --ip6tables=false --bridge=none \
        --registry-mirror "http://$REGISTRY" --insecure-registry "$REGISTRY" \
        --data-root "$DOCKER_DATA" --exec-root "$DOCKER_RUN/exec" \
        --pidfile "$DOCKER_PIDFILE" --host "$DOCKER_HOST" \
        >"$DOCKER_LOG" 2>&1 &
    DOCKERD_PID=$!
    local i
    for i in $(seq 1 120); do
        if docker info >/dev/null 2>&1; then
            log "dockerd $DOCKERD_PID up on $DOCKER_SOCK after ~$((i / 4))s"
            return 0
        fi
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.25
    done
    log "dockerd did not come up; last lines of $DOCKER_LOG:"
    tail -n 30 "$DOCKER_LOG" >&2 || true
    return 1
}

# Stops the dockerd this script started (by its pid only).
docker_stop() {
    [ -n "$DOCKERD_PID" ] || return 0
    kill -TERM "$DOCKERD_PID" 2>/dev/null || return 0
    local i
    for i in $(seq 1 60); do
        kill -0 "$DOCKERD_PID" 2>/dev/null || { log "dockerd $DOCKERD_PID stopped"; DOCKERD_PID=""; return 0; }
        sleep 0.25
    done
    log "dockerd $DOCKERD_PID ignored SIGTERM for 15 s; sending SIGKILL"
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=""
}
