#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs them all.
#   apt: Java 17 + Maven (for the Kafka jars), prometheus (+ promtool), kcat, dataset-fashion-mnist
#   Maven Central: Apache Kafka 4.x jars (deploy/kafka/local-kafka install; ~/.m2 caches them)
#   PyPI: this package with its test extras (pip's cache makes a rerun fast)
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not integration"`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v kcat >/dev/null || missing+=(kcat)
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing with apt: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

deploy/kafka/local-kafka install
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
