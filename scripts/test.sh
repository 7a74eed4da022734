#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs what it needs,
# starts the database servers, runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
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
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -m "not disruptive" "$@"
rc=$?
# Last and alone: tests that restart PostgreSQL and Redis under running conductors.
if [ $# -eq 0 ] && [ $rc -ne 5 ]; then
    .venv/bin/python -m pytest -q -p no:cacheprovider -m disruptive
    rc2=$?; [ $rc -eq 0 ] && rc=$rc2
fi
set -e
if [ $rc -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit $rc
