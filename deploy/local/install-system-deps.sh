#!/usr/bin/env bash
# Installs what the project needs from Debian's packages and is not on a fresh machine:
# redis-server (the stack and the tests), chromium and a CJK font (the browser tests), wrk
# (the load generator of `make bench`), ss (iproute2: `make bench` counts each service's
# requests to Kafka and Redis with it), promtool (from the `prometheus` package: the tests
# check deploy/observability/ with it), perf where Debian has it (`make bench
# BENCH_ARGS="--profile redis"`; optional), and checks that Java 17+ and Maven (Kafka) are there.
# Idempotent: installs only what is missing.
set -euo pipefail

want=()
command -v redis-server >/dev/null || want+=(redis-server)
command -v wrk >/dev/null || want+=(wrk)
command -v ss >/dev/null || want+=(iproute2)
[[ "${LC_SKIP_CHROMIUM:-0}" == 1 ]] || [[ -x /usr/bin/chromium ]] || want+=(chromium)
# A CJK font, so the pages' Chinese titles (阳澄湖大闸蟹) render in the browser tests' screenshots.
[[ "${LC_SKIP_CHROMIUM:-0}" == 1 ]] || [[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]] || want+=(fonts-wqy-microhei)
command -v java >/dev/null || want+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || want+=(maven)
# Optional (the tests fall back to structural checks without it), so only where apt-get
# can install it. Only promtool is wanted; the package's Prometheus server is stopped below.
if [[ "${LC_SKIP_PROMTOOL:-0}" != 1 ]] && ! command -v promtool >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    want+=(prometheus)
  else
    echo "note: promtool not found (Debian: apt-get install prometheus); deploy/observability is then checked without it" >&2
  fi
fi

if ((${#want[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "missing: ${want[*]} — install them with your package manager (Debian: apt-get install ${want[*]})" >&2
    exit 1
  fi
  echo "installing from Debian: ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
  if [[ " ${want[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    # Debian starts and enables the server (on :9090); this machine only needs promtool.
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

# Optional, and only noted when it cannot be had: perf samples redis-server for `make bench
# BENCH_ARGS="--profile redis"`; nothing else needs it.
if [[ "${LC_SKIP_PERF:-0}" != 1 ]] && ! command -v perf >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null \
    && { apt-get install -y -q --no-install-recommends linux-perf >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends linux-perf >/dev/null 2>&1; }; }; then
    echo "installed from Debian: linux-perf"
  else
    echo "note: perf not found (Debian: apt-get install linux-perf); make bench --profile redis needs it" >&2
  fi
fi

java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
if [[ -z "$java_major" || "$java_major" -lt 17 ]]; then
  echo "Kafka 4 needs Java 17 or newer; found: $(java -version 2>&1 | head -1)" >&2
  exit 1
fi
