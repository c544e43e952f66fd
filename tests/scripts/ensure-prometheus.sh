#!/bin/sh
# Make sure `promtool` and `prometheus` are on PATH, installing Debian's
# `prometheus` package when they are missing.
#
# Idempotent and non-interactive: exits 0 at once when both tools exist;
# otherwise needs root (or passwordless sudo) and apt. Waits for the dpkg lock
# (other builds may be installing packages) instead of failing on it.
# Prints the directory holding the tools on success.
set -eu

have() { command -v "$1" >/dev/null 2>&1; }

if have promtool && have prometheus; then
    dirname "$(command -v promtool)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif have sudo && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "ensure-prometheus: promtool/prometheus missing and not root; install Debian's 'prometheus' package" >&2
    exit 1
fi

if ! have apt-get; then
    echo "ensure-prometheus: apt-get not found; install Prometheus (promtool + prometheus) by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package's maintainer script may try to start a service; there is no init
# system in a container, and we only want the binaries.
APT="$SUDO apt-get -y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
if ! $APT install --no-install-recommends prometheus >/tmp/ensure-prometheus.log 2>&1; then
    # The package lists may be stale or empty: refresh once and retry.
    $SUDO apt-get -q -o DPkg::Lock::Timeout=600 update >>/tmp/ensure-prometheus.log 2>&1 || true
    $APT install --no-install-recommends prometheus >>/tmp/ensure-prometheus.log 2>&1 || {
        echo "ensure-prometheus: apt-get install prometheus failed; see /tmp/ensure-prometheus.log" >&2
        tail -n 20 /tmp/ensure-prometheus.log >&2
        exit 1
    }
fi

if have promtool && have prometheus; then
    dirname "$(command -v promtool)"
    exit 0
fi
echo "ensure-prometheus: installed the package but promtool/prometheus are still not on PATH" >&2
exit 1
