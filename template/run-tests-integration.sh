#!/usr/bin/env bash
# Integration tests (test_integration_*) and the unit tests, plus the code-style check when the
# Rust toolchain is here. They find RabbitMQ through the PIPEFORCE_MESSAGING_* variables.
# Prints the JUnit XML report on stdout, keeps it in target/test-results/junit-integration.xml and exits
# non-zero when a test fails. Works in a checkout (with cargo) and in the test image (without).
# See scripts/run-tests.sh for the details and the variables it reads.
set -euo pipefail
exec "$(dirname "$0")/scripts/run-tests.sh" integration
