#!/usr/bin/env bash
# Every test: unit, integration and performance, plus the code-style check when the Rust
# toolchain is here.
# Prints the JUnit XML report on stdout, keeps it in target/test-results/junit-all.xml and exits
# non-zero when a test fails. Works in a checkout (with cargo) and in the test image (without).
# See scripts/run-tests.sh for the details and the variables it reads.
set -euo pipefail
exec "$(dirname "$0")/scripts/run-tests.sh" all
