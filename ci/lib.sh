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

# The Python tools the suite validates API documents with. pip may refuse to touch a
# system-managed Python (PEP 668); --break-system-packages is ignored by older pips.
ensure_python_tools() {
    if python3 -c 'import jsonschema, openapi_spec_validator' 2>/dev/null &&
        command -v schemathesis >/dev/null 2>&1; then
        return
    fi
    echo "ci: installing jsonschema, openapi-spec-validator and schemathesis (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check \
        jsonschema openapi-spec-validator schemathesis 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            jsonschema openapi-spec-validator schemathesis
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
