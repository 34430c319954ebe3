#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian/Ubuntu machine, then runs them all.
#   apt: python3-venv, Java 17 + Maven (for the Kafka jars), prometheus (+ promtool), kcat, systemd
#        (systemd-analyze, for the deploy kit's unit), dataset-fashion-mnist
#   Maven Central: Apache Kafka 4.x jars (deploy/kafka/local-kafka install; ~/.m2 caches them)
#   PyPI: this package with its test extras, into .venv: the virtual environment the README's first
#         command makes (the distribution's Python refuses pip installs outside one, PEP 668);
#         a rerun finds it made and installs only what changed
# The tests run with .venv's Python, and so do the `python -m lifelong.cli` processes they start.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not integration"`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The distribution's Python 3.11+ (Ubuntu 22.04's python3 is 3.10; its python3.11 is a package).
py=python3 venv_pkg=python3-venv
if command -v python3 >/dev/null && ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  py=python3.11 venv_pkg=python3.11-venv
fi

missing=()
"$py" -c 'import ensurepip' 2>/dev/null || missing+=("$venv_pkg")
# tests/integration/test_newcomer.py runs the README's first command with /usr/bin/python3.
[ ! -x /usr/bin/python3 ] || /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v kcat >/dev/null || missing+=(kcat)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing with apt: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

deploy/kafka/local-kafka install
# Made again only if it is not a working one (say, made before python3-venv was installed).
.venv/bin/python -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || "$py" -m venv --clear .venv
echo "installing this package and its test extras into .venv (the first time 3 GB of wheels from PyPI)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
