#!/usr/bin/env bash
# Installs the Debian packages tpx builds and tests with, only those missing (idempotent).
# The CUDA toolkit is not a Debian package here: it is used from /usr/local/cuda when present.
set -euo pipefail
packages=(cmake g++ make pkg-config libopenmpi-dev openmpi-bin libhdf5-dev libtomlplusplus-dev
          libboost-program-options-dev libgtest-dev nlohmann-json3-dev libzip-dev clang libclang-rt-14-dev
          slurm-wlm slurmctld slurmd slurm-client munge iproute2 util-linux bc
          libpcre2-dev libutf8proc-dev libcpp-httplib-dev)
# node runs the tokenizer's and chat templates' differential tests (tests/tokenizer/, tests/chat/);
# only when absent, because an image's own node + npm conflict with Debian's npm package (never
# installed here: without npm those tests skip).
command -v node >/dev/null || packages+=(nodejs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
