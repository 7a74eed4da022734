#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs what it needs,
# starts the database servers, runs pytest: everything but the libvirt tiers on
# the real daemons in parallel workers (pytest-xdist), beside those in one process.
# Extra arguments go to pytest (one process).
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    the inner loop: SQLite only, no servers, no real
#                              guests, no process-killing matrices (< 3 min)
#
# TEST_WORKERS sets the number of pytest workers (default: 2, or 1 on a
# single-core machine; 0 runs in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
cores=$(nproc 2>/dev/null || echo 1)
workers=${TEST_WORKERS:-$(( cores >= 2 ? 2 : 1 ))}
parallel=(); [ "$workers" -gt 0 ] && parallel=(-n "$workers")
scripts/setup.sh
if [ $quick -eq 1 ]; then
    export COMPUTEFLOW_TEST_QUICK=1  # tests/conftest.py leaves out the server fixtures' users
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" --durations=10 \
        -m "not disruptive and not integration" \
        -k "not postgresql and not mysql and not redis and not zookeeper and not etcd" \
        --ignore=tests/drivers/libvirt --ignore=tests/web "$@"
fi
scripts/services.sh
# The libvirt driver's tiers: qemu-img for test:///, QEMU + libvirtd + a tiny guest for real guests.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO scripts/libvirt/install.sh
export COMPUTEFLOW_TEST_GUEST_DIR=${COMPUTEFLOW_TEST_GUEST_DIR:-/var/tmp/computeflow-guest}
$SUDO scripts/libvirt/build_guest.sh "$COMPUTEFLOW_TEST_GUEST_DIR"
$SUDO scripts/libvirt/start_daemon.sh
$SUDO scripts/libvirt/start_second_daemon.sh  # the live-migration tier's destination
scripts/web/install.sh  # headless Chromium + chromedriver for tests/web's browser test
set +e
if [ $# -gt 0 ]; then  # a chosen part: one process (it may name libvirt tests)
    .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -m "not disruptive" "$@"
    rc=$?
else
    # Two runs side by side. The libvirt tiers on the real daemons in one
    # process (they share two daemons, their host names and the test guest),
    # its report printed when it ends: their TCG guests mostly wait, leaving a
    # core half idle. Everything else in parallel workers (the test:///default
    # tier is in-process), niced so the guests, whose boot and migration
    # times the tiers wait on, get the CPU first.
    libvirt_log=$(mktemp /tmp/computeflow-libvirt-tiers.XXXXXX)
    .venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 -m "libvirt_daemons and not disruptive" \
        tests/drivers/libvirt > "$libvirt_log" 2>&1 &
    libvirt_pid=$!
    trap 'kill $libvirt_pid 2>/dev/null' EXIT  # not left running if this script is stopped
    nice -n 10 .venv/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" --durations=25 \
        -m "not disruptive and not libvirt_daemons"
    rc=$?
    wait $libvirt_pid
    rc2=$?; [ $rc -eq 0 ] && rc=$rc2
    trap - EXIT
    echo "test.sh: the libvirt tiers on the real daemons (run beside the above):"
    cat "$libvirt_log"; rm -f "$libvirt_log"
fi
# Last and alone: tests that restart PostgreSQL and Redis under running conductors.
if [ $# -eq 0 ] && [ $rc -ne 5 ]; then
    .venv/bin/python -m pytest -q -p no:cacheprovider -m disruptive
    rc2=$?; [ $rc -eq 0 ] && rc=$rc2
fi
set -e
if [ $rc -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit $rc
