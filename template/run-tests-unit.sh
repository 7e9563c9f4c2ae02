#!/usr/bin/env bash
# Unit tests: every test not named test_integration_* or test_performance_*, plus the code-style
# check (rustfmt, clippy) when the Rust toolchain is here.
# Prints the JUnit XML report on stdout, keeps it in target/test-results/junit-unit.xml and exits
# non-zero when a test fails. Works in a checkout (with cargo) and in the test image (without).
# See scripts/run-tests.sh for the details and the variables it reads.
set -euo pipefail
exec "$(dirname "$0")/scripts/run-tests.sh" unit
