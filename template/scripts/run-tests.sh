#!/usr/bin/env bash
# Runs one kind of this project's tests with cargo-nextest, prints the JUnit XML report on
# stdout and keeps it in $TEST_RESULTS_DIR/junit-<kind>.xml. The run-tests-*.sh scripts at the
# project root call it:
#   scripts/run-tests.sh unit|integration|performance|all
#
# The kind of a test is read from its name, as in PIPEFORCE's Python template:
#   test_integration_*   integration test: needs RabbitMQ (and the hub, if it calls it)
#   test_performance_*   performance test: measures and reports
#   anything else        unit test
# `unit` runs the unit tests, `integration` the unit and integration tests, `performance` only
# the performance tests, `all` everything. Whenever unit tests run, the code style is checked
# too (cargo fmt --check, cargo clippy -D warnings) and reported as the test case
# code-style::code_style.
#
# It runs wherever the project is:
#   - with cargo on PATH (a checkout, locally or in CI): builds and runs `cargo nextest run`;
#   - without cargo (the test image, `docker build --target test`): runs the tests prebuilt
#     into the nextest archive $TESTS_ARCHIVE with the cargo-nextest binary. The code-style
#     check needs the toolchain and is reported as skipped there.
#
# Environment:
#   TEST_RESULTS_DIR       where the report is kept (default: target/test-results)
#   TESTS_ARCHIVE          the archive run without cargo (default: tests.tar.zst at the root)
#   CODE_STYLE_CHECK=skip  leaves out the code-style check (reported as skipped), e.g. in a CI
#                          pipeline that runs fmt and clippy as jobs of their own
#   BROKER_WAIT_SECS       how long integration runs wait for RabbitMQ to accept connections
#                          before they start anyway (default 30; 0 does not wait)
#   PIPEFORCE_MESSAGING_*  where the integration tests find RabbitMQ: the service's variables
#
# Exit status: 0 when every test passed and the code style is clean; nextest's status when a
# test failed or the tests did not build; 1 when only the code style failed; 2 when it cannot
# run (a bad argument, nextest or the test archive missing).
set -euo pipefail

kind=${1:-}
name=run-tests-$kind

log() { printf '%s: %s\n' "$name" "$*" >&2; }
die() {
    log "$*"
    exit 2
}

# Kinds by the test function's name, the last segment of the test's path: tests in modules
# (`module::test_integration_x`) count too.
integration='test(/(^|::)test_integration_[^:]*$/)'
performance='test(/(^|::)test_performance_[^:]*$/)'
case $kind in
    unit) filter="not ($integration | $performance)" ;;
    integration) filter="not $performance" ;;
    performance) filter=$performance ;;
    all) filter='all()' ;;
    *) die "usage: $0 unit|integration|performance|all" ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
results_dir=${TEST_RESULTS_DIR:-$root/target/test-results}
report=$results_dir/junit-$kind.xml
# Where nextest writes the report of its `ci` profile: `[store] dir` and `[profile.ci.junit]`
# in .config/nextest.toml, relative to the workspace root (also when run from an archive).
junit=$root/target/nextest/ci/junit.xml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if command -v cargo >/dev/null 2>&1; then
    mode=cargo
    cargo nextest --version >/dev/null 2>&1 ||
        die "cargo-nextest is missing: cargo install cargo-nextest --locked (https://nexte.st)"
else
    mode=archive
    archive=${TESTS_ARCHIVE:-$root/tests.tar.zst}
    [ -f "$archive" ] ||
        die "no cargo here and no test archive at $archive: build the test image (docker build --target test) or install Rust"
    command -v cargo-nextest >/dev/null 2>&1 || die "no cargo and no cargo-nextest on PATH"
fi

# Waits until RabbitMQ accepts connections: a broker started beside the tests (a CI service
# container) may still be booting, and each integration test would otherwise spend its own
# timeout on it.
wait_for_broker() {
    local address host port tls deadline
    tls=${PIPEFORCE_MESSAGING_TLS:-false}
    port=5672
    [ "${tls,,}" != true ] || port=5671
    address=${PIPEFORCE_MESSAGING_ADDRESSES:-}
    address=${address%%,*}
    if [ -n "$address" ]; then
        host=${address%%:*}
        [ "$host" = "$address" ] || port=${address##*:}
    else
        host=${PIPEFORCE_MESSAGING_HOST:-localhost}
        port=${PIPEFORCE_MESSAGING_PORT:-$port}
    fi
    deadline=$((SECONDS + ${BROKER_WAIT_SECS:-30}))
    # shellcheck disable=SC2016 # $0 and $1 are for the inner bash to expand
    until timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "RabbitMQ at $host:$port does not accept connections; running the tests anyway"
            return
        fi
        sleep 1
    done
}
case $kind in integration | all) wait_for_broker ;; esac

# A stale report must not stand in for this run's.
rm -f "$junit"
status=0
# stdout is for the report alone: nextest's and cargo's output goes to stderr.
if [ "$mode" = cargo ]; then
    cargo nextest run --locked --workspace --profile ci --no-tests=warn -E "$filter" >&2 ||
        status=$?
else
    mkdir "$work/archive"
    cargo-nextest nextest run --archive-file "$archive" --workspace-remap "$root" \
        --extract-to "$work/archive" --profile ci --no-tests=warn -E "$filter" >&2 ||
        status=$?
fi
if [ ! -f "$junit" ]; then
    log "nextest wrote no report (exit status $status): the tests did not build or start, see above"
    exit $((status == 0 ? 1 : status))
fi

# The code-style check: its outcome in $style (passed, failed or skipped), why in $style_why,
# what the tools printed in $work/style.log.
style_log=$work/style.log
: >"$style_log"
style_step() {
    # Colours would put escape codes into the XML; CI systems often force them on.
    printf '$ %s\n' "$*" | tee -a "$style_log" >&2
    CARGO_TERM_COLOR=never "$@" 2>&1 | tee -a "$style_log" >&2
}
check_code_style() {
    if [ "${CODE_STYLE_CHECK:-}" = skip ]; then
        style=skipped style_why="CODE_STYLE_CHECK=skip"
    elif [ "$mode" != cargo ]; then
        style=skipped style_why="no Rust toolchain here; CI checks the code style"
    elif ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        style=skipped style_why="rustfmt or clippy is missing: rustup component add rustfmt clippy"
    else
        local failed=()
        style_step cargo fmt --all --check -- --color never ||
            failed+=("cargo fmt --all --check")
        style_step cargo clippy --locked --workspace --all-targets -- -D warnings ||
            failed+=("cargo clippy -D warnings")
        if [ ${#failed[@]} -eq 0 ]; then
            style=passed style_why=""
        else
            style=failed style_why="failed: $(printf '%s; ' "${failed[@]}")"
            style_why=${style_why%; }
        fi
    fi
    log "code style: $style${style_why:+ ($style_why)}"
}

# Text made safe for XML: markup escaped, control characters XML 1.0 forbids removed.
xml_escape() {
    tr -d '\000-\010\013\014\016-\037' |
        sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
}

# Adds the code-style outcome to nextest's report as a test suite of its own, and counts it
# in the totals of <testsuites>.
add_code_style_case() {
    local why failures=0 skipped=0 outcome=""
    why=$(printf '%s' "$style_why" | xml_escape)
    case $style in
        failed)
            failures=1
            outcome="            <failure type=\"code style\" message=\"$why\"/>"
            ;;
        skipped)
            skipped=1
            outcome="            <skipped message=\"$why\"/>"
            ;;
    esac
    {
        printf '    <testsuite name="code-style" tests="1" skipped="%s" errors="0" failures="%s">\n' \
            "$skipped" "$failures"
        printf '        <testcase name="code_style" classname="code-style">\n'
        [ -z "$outcome" ] || printf '%s\n' "$outcome"
        printf '            <system-out>'
        xml_escape <"$style_log"
        printf '</system-out>\n'
        printf '        </testcase>\n'
        printf '    </testsuite>\n'
    } >"$work/style.xml"
    awk -v failures="$failures" -v skipped="$skipped" -v suite="$work/style.xml" '
        # Adds `by` to the number in attribute `attr` of `line`.
        function bump(line, attr, by,    key, start, rest, end) {
            key = " " attr "=\""
            start = index(line, key)
            if (start == 0) return line
            start += length(key)
            rest = substr(line, start)
            end = index(rest, "\"")
            return substr(line, 1, start - 1) (substr(rest, 1, end - 1) + by) substr(rest, end)
        }
        /<testsuites / { $0 = bump(bump(bump($0, "tests", 1), "failures", failures), "skipped", skipped) }
        /^<\/testsuites>/ { while ((getline line < suite) > 0) print line }
        { print }
    ' "$junit" >"$work/report.xml"
    grep -q 'classname="code-style"' "$work/report.xml" ||
        die "cannot add the code-style result to nextest's report $junit"
    mv "$work/report.xml" "$junit"
}

style=none
if [ "$kind" != performance ]; then
    check_code_style
    add_code_style_case
fi

mkdir -p "$results_dir"
cp "$junit" "$report"
cat "$report"
total() { sed -n "s/^<testsuites .* $1=\"\([0-9]*\)\".*/\1/p" "$report"; }
log "$(total tests) tests, $(total failures) failed, $(total skipped) skipped; report: $report"

if [ "$status" -ne 0 ]; then
    exit "$status"
fi
[ "$style" != failed ] || exit 1
