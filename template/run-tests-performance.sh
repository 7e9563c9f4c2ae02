#!/usr/bin/env bash
# Performance tests (test_performance_*) only; each runs alone and reports what it measured.
# Prints the JUnit XML report on stdout, keeps it in target/test-results/junit-performance.xml and exits
# non-zero when a test fails. Works in a checkout (with cargo) and in the test image (without).
# See scripts/run-tests.sh for the details and the variables it reads.
set -euo pipefail
exec "$(dirname "$0")/scripts/run-tests.sh" performance
