#!/usr/bin/env bash
# Build the container image and run deploy/compose.yaml for real: an aggregator, three hospital nodes and
# a one-shot job (deploy/compose.job.yaml), then `cipherfed audit verify` over every party's volume.
#
#   scripts/deploy-test.sh            # what `make deploy-test` runs
#   scripts/deploy-test.sh --build    # only the wheelhouse, the base image and the image
#
# Why each step is here:
# - No registry may be reachable (Docker Hub is not, on the CI machines): the base image is then made
#   from Debian's packages (debootstrap --variant=minbase bookworm + docker import) and cached as
#   cipherfed-base:bookworm; it is rebuilt only when that image is missing.
# - A fresh image lacks this machine's CA certificates, so pip inside the build could not verify PyPI:
#   the wheelhouse is built on the host (build/wheelhouse) and the Dockerfile installs only from it.
# - Certificates, keys, configs and data are made by the project's own CLI (ca init/issue/sign, node init,
#   keys create), the way docs/run-consortium.md and docs/install-node.md describe, in a fresh directory,
#   by the image itself (scripts/deploy-test-provision.sh): the host needs Python only for `pip wheel`.
# - Everything the run creates (containers, network, volumes, work directory) is removed on exit, also on
#   failure, after printing the containers' logs. Images are kept: they are the cache of the next run
#   (the image a rebuild replaces is removed). To drop everything this script ever made:
#     docker rmi cipherfed:0.1.0 cipherfed-base:bookworm; docker builder prune -af; rm -rf build/wheelhouse
#   A run killed before its teardown leaves project cipherfed-deploytest: the next run removes it first,
#   or by hand: docker-compose -p cipherfed-deploytest -f deploy/compose.yaml -f deploy/compose.job.yaml down -v
#
# Environment: BASE_IMAGE (skip the base choice), CIPHERFED_IMAGE (default cipherfed:0.1.0),
# CIPHERFED_PYTHON (host Python whose pip builds the wheelhouse, default .venv/bin/python), DOCKER (client),
# DEPLOY_TEST_KEEP=1 (leave the work directory for inspection), DEPLOY_TEST_TIMEOUT (job, seconds; 600).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${CIPHERFED_IMAGE:-cipherfed:0.1.0}
DEBIAN_BASE=cipherfed-base:bookworm
PROJECT=cipherfed-deploytest
HOSPITALS=(hospital-1 hospital-2 hospital-3)  # as in deploy/compose.yaml and deploy-test-provision.sh
PY=${CIPHERFED_PYTHON:-$REPO/.venv/bin/python}
DOCKER=${DOCKER:-docker}
JOB_TIMEOUT=${DEPLOY_TEST_TIMEOUT:-600}
NICE=(nice -n 15)
SECONDS=0

log() { printf '[deploy-test %4ss] %s\n' "$SECONDS" "$*"; }
die() { printf '[deploy-test] FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
choose_tools() {
    "$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers ($DOCKER info); start dockerd first"
    # Compose: the v2 plugin if present, else Debian bookworm's docker-compose (v1.29, Python)
    if "$DOCKER" compose version >/dev/null 2>&1; then
        COMPOSE=("$DOCKER" compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker-compose)"
    fi
    COMPOSE_VERSION=$("${COMPOSE[@]}" version --short 2>/dev/null || echo unknown)
    COMPOSE+=(-p "$PROJECT" -f "$REPO/deploy/compose.yaml" -f "$REPO/deploy/compose.job.yaml")
    # BuildKit caches by content and builds stages in parallel: the classic builder took 470 s here where
    # BuildKit takes ~100 s. Clients from 23 on reach it only through the buildx plugin; Debian's docker.io
    # client (20.10) has it built in, so use that one to build when buildx is missing.
    BUILD_DOCKER=$DOCKER
    export DOCKER_BUILDKIT=0
    local client major
    if "$DOCKER" buildx version >/dev/null 2>&1; then
        DOCKER_BUILDKIT=1
    else
        for client in "$DOCKER" /usr/bin/docker; do
            major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1) || continue
            if [[ $major =~ ^[0-9]+$ ]] && ((major < 23)); then
                BUILD_DOCKER=$client DOCKER_BUILDKIT=1
                break
            fi
        done
    fi
    log "docker client $("$DOCKER" version --format '{{.Client.Version}}' 2>/dev/null), engine" \
        "$("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null), compose: ${COMPOSE[0]##*/} $COMPOSE_VERSION," \
        "build: $BUILD_DOCKER with BuildKit=$DOCKER_BUILDKIT"
}

# ---------------------------------------------------------------- base image
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

choose_base() {
    if [[ -n ${BASE_IMAGE:-} ]]; then
        log "base image $BASE_IMAGE (from BASE_IMAGE)"
    elif have_image python:3.11-slim || timeout 120 "$DOCKER" pull -q python:3.11-slim >/dev/null 2>&1; then
        BASE_IMAGE=python:3.11-slim
        log "base image python:3.11-slim (the Dockerfile's default)"
    else
        BASE_IMAGE=$DEBIAN_BASE
        if have_image "$DEBIAN_BASE"; then
            log "no registry reachable: base image $DEBIAN_BASE (cached)"
        else
            log "no registry reachable: making $DEBIAN_BASE from Debian's packages (debootstrap, once)"
            debian_base
        fi
    fi
}

debian_base() {
    command -v debootstrap >/dev/null || die "debootstrap is not installed (Debian: apt-get install debootstrap)"
    [[ $(id -u) == 0 ]] || die "debootstrap needs root; or docker tag an existing Debian bookworm image as $DEBIAN_BASE"
    local root
    root=$(mktemp -d /var/tmp/cipherfed-base.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    "${NICE[@]}" debootstrap --variant=minbase bookworm "$root/rootfs" http://deb.debian.org/debian \
        >"$root/debootstrap.log" 2>&1 || { tail -20 "$root/debootstrap.log"; die "debootstrap failed"; }
    printf '%s\n' "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" >"$root/rootfs/etc/apt/sources.list"
    rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/*
    tar -C "$root/rootfs" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$DEBIAN_BASE" >/dev/null
}

# ---------------------------------------------------------------- image
build_image() {
    local wheels=$REPO/build/wheelhouse stamp
    stamp=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
    if [[ -f $wheels/.pyproject.sha256 && $(cat "$wheels/.pyproject.sha256") == "$stamp" ]]; then
        log "wheelhouse up to date with pyproject.toml ($wheels)"
    else
        # made afresh so a dependency dropped from pyproject.toml never lingers in the image
        log "wheelhouse (host pip wheel): torch==2.13.0 CPU and every dependency of cipherfed"
        rm -rf "$wheels"
        "${NICE[@]}" "$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheels" \
            torch==2.13.0 wheel "$REPO" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        rm -f "$wheels"/cipherfed-*.whl  # the image builds cipherfed from the sources instead
        echo "$stamp" >"$wheels/.pyproject.sha256"
    fi
    log "building $IMAGE on $BASE_IMAGE"
    local started=$SECONDS previous
    previous=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    "${NICE[@]}" "$BUILD_DOCKER" build --quiet -f "$REPO/deploy/docker/Dockerfile" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$REPO" >/dev/null
    # the image this build replaced would stay behind untagged (1.3 GB per source change on a CI machine)
    if [[ -n $previous && $previous != $("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE") ]]; then
        "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
    fi
    log "built $IMAGE in $((SECONDS - started)) s: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" |
        awk '{printf "%.0f MB", $1 / 1e6}')"
}

# ---------------------------------------------------------------- provisioning
# In a throw-away container of the image: the same CLI the services run (see deploy-test-provision.sh).
in_image() {
    "$DOCKER" run --rm --user 0 --network none -v "$WORK:/work" \
        -v "$REPO/scripts/deploy-test-provision.sh:/provision.sh:ro" --entrypoint bash "$IMAGE" /provision.sh "$@"
}

# ---------------------------------------------------------------- run
epoch_of() { date -d "$1" +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
cid() { "${COMPOSE[@]}" ps -a -q "$1"; }

# CPU seconds a container has used so far (cgroup v1 or v2): unlike wall time, not inflated by a busy host
cpu_seconds() {
    "$DOCKER" exec "$1" sh -c 'if [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then
            awk "{printf \"%.1f\", \$1 / 1e9}" /sys/fs/cgroup/cpuacct/cpuacct.usage
        else awk "/^usage_usec/ {printf \"%.1f\", \$2 / 1e6}" /sys/fs/cgroup/cpu.stat; fi' 2>/dev/null || echo "?"
}

wait_until() {  # wait_until TIMEOUT_S DESCRIPTION COMMAND...: poll every 0.2 s
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after $1 s waiting for $what"
        sleep 0.2
    done
}

run_consortium() {
    export CIPHERFED_DEPLOY_DIR=$WORK CIPHERFED_BASE_IMAGE=$BASE_IMAGE
    if (exec 3<>/dev/tcp/127.0.0.1/7443) 2>/dev/null; then
        die "port 7443 is in use on this host (compose publishes the aggregator there); stop that service first"
    fi
    log "starting the aggregator"
    "${COMPOSE[@]}" up -d --no-build aggregator >/dev/null 2>&1 || "${COMPOSE[@]}" up -d --no-build aggregator
    local agg started
    agg=$(cid aggregator)
    started=$(epoch_of "$("$DOCKER" inspect -f '{{.State.StartedAt}}' "$agg")")
    wait_until 120 "the aggregator's health check" \
        "$DOCKER" exec "$agg" cipherfed aggregator health --config /etc/cipherfed/aggregator.toml
    AGG_READY_S=$(since "$started" "$(date +%s.%N)")
    AGG_READY_CPU=$(cpu_seconds "$agg")
    log "aggregator healthy ${AGG_READY_S} s after its container started (${AGG_READY_CPU} CPU s)"

    log "key custodian hospital-1: keys create (secret stays in its volume, wrapped copies via the aggregator)"
    local out fp
    out=$("${COMPOSE[@]}" run --rm --no-deps -T hospital-1 keys create --config /etc/cipherfed/node.toml \
        --member-cert /etc/cipherfed/members/hospital-2.crt --member-cert /etc/cipherfed/members/hospital-3.crt \
        2>"$WORK/keys-create.log") || { cat "$WORK/keys-create.log"; die "keys create failed: $out"; }
    fp=$(sed -n 's/^use it in job specs: key_fingerprint = "\([0-9a-f]*\)"$/\1/p' <<<"$out")
    [[ -n $fp ]] || die "keys create printed no key fingerprint: $out"
    log "HE key $fp"
    in_image job "$fp"

    log "starting the three hospitals and the job (compose waits for the aggregator's docker health status)"
    "${COMPOSE[@]}" up -d --no-build >/dev/null 2>&1 || "${COMPOSE[@]}" up -d --no-build
    local node
    node=$(cid hospital-1)
    started=$(epoch_of "$("$DOCKER" inspect -f '{{.State.StartedAt}}' "$node")")
    wait_until 120 "hospital-1's first poll" "$DOCKER" exec "$node" test -e /var/lib/cipherfed/heartbeat
    NODE_POLL_S=$(since "$started" "$(date +%s.%N)")
    NODE_POLL_CPU=$(cpu_seconds "$node")
    log "hospital-1 polled the aggregator ${NODE_POLL_S} s after its container started (${NODE_POLL_CPU} CPU s)"

    local job code
    job=$(cid job)
    [[ -n $job ]] || die "the job container was not created"
    code=$(timeout "$JOB_TIMEOUT" "$DOCKER" wait "$job") || die "the job did not finish within $JOB_TIMEOUT s"
    "$DOCKER" logs "$job" 2>&1 | tail -n 8 | awk '{print "    job | " $0}'  # awk: ends the last line too
    [[ $code == 0 ]] || die "the job container exited with $code"
    log "job completed"
}

verify_audit() {
    local mounts=() logs=() v name
    for v in aggregator "${HOSPITALS[@]}"; do
        name=$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT" \
            --filter "label=com.docker.compose.volume=$v-state")
        [[ -n $name ]] || die "no volume $v-state"
        mounts+=(-v "$name:/audit/$v:ro")
        logs+=("/audit/$v/audit.jsonl")
    done
    log "audit verify over the four volumes"
    "$DOCKER" run --rm "${mounts[@]}" -v "$WORK/consortium/aggregator/ca.crt:/ca.crt:ro" "$IMAGE" \
        audit verify "${logs[@]}" --ca /ca.crt | sed 's/^/    audit | /'
    [[ ${PIPESTATUS[0]} == 0 ]] || die "audit verify failed"
}

teardown() {
    local status=$?
    set +e
    if [[ -n ${COMPOSE+x} && -n ${WORK:-} ]]; then
        if ((status != 0)); then
            echo "---- container logs (the run failed) ----"
            "${COMPOSE[@]}" logs --no-color --tail=150 2>&1
            echo "---- end of container logs ----"
        fi
        "${COMPOSE[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 ||
            "${COMPOSE[@]}" down -v --remove-orphans --timeout 10
    fi
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if [[ ${DEPLOY_TEST_KEEP:-0} == 1 ]]; then
            echo "work directory kept: $WORK"
        elif [[ $(id -u) == 0 ]]; then
            rm -rf "$WORK"
        else
            "$DOCKER" run --rm --user 0 --entrypoint sh -v "$WORK:/w" "$IMAGE" -c 'rm -rf /w/*'
            rm -rf "$WORK"
        fi
    fi
    if ((status == 0)); then
        log "passed in $SECONDS s"
    else
        echo "[deploy-test] failed after $SECONDS s" >&2
    fi
}

main() {
    choose_tools
    choose_base
    build_image
    [[ ${1:-} == --build ]] && return 0
    trap teardown EXIT
    WORK=$(mktemp -d /tmp/cipherfed-deploytest.XXXXXX)
    chmod 755 "$WORK"
    # a previous run that was killed before its teardown: remove what it left
    "${COMPOSE[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    log "provisioning in $WORK with the image's CLI: CA, certificates, node keys, configs, policies, records"
    in_image provision
    run_consortium
    verify_audit
    log "load average during the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
    log "measured: image $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')," \
        "aggregator container start -> healthy ${AGG_READY_S} s (${AGG_READY_CPU} CPU s)," \
        "node container start -> first poll ${NODE_POLL_S} s (${NODE_POLL_CPU} CPU s)"
}

main "$@"
