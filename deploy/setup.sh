#!/usr/bin/env bash
# Sets orrery up on Debian 12 and then runs one job:
#   bash deploy/setup.sh demo   install, build, run `orrery demo`
#   bash deploy/setup.sh test   install, build, run the whole test suite
#   bash deploy/setup.sh build  install and build only
# Idempotent: packages already present are not reinstalled, and the build is
# incremental (ccache keeps rebuilds of a fresh clone fast). As root it links
# /usr/local/bin/orrery to the build; otherwise it prints the PATH to set.
# Environment: ORRERY_WERROR=ON turns warnings into errors (CI sets it);
# ORRERY_BUILD_DIR (default: build) names the build folder.
set -euo pipefail

job="${1:-build}"
case "$job" in
  demo|test|build) ;;
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup.sh: unknown job '$job' (expected demo, test or build)" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ORRERY_BUILD_DIR:-$root/build}"

# libopenblas0-pthread: without it libtorch's matmuls fall back to reference
# BLAS, ~10x slower (ARCHITECTURE.md, build facts). iproute2: `ip` and `tc`
# for `orrery testbed` and its tests. bible-kjv: the King James Bible, the
# corpus the demo's model is trained on (data/kjv.txt below). cpp-httplib and
# prometheus-cpp: `orrery serve`'s HTTP and /metrics; nodejs and npm: the
# official `openai` client its tests drive it with (test/clients). pcre2 and
# sentencepiece: HF tokenizer.json pre-tokenizer regexes, tokenizer.model
# files and spm_train (`orrery tokenizer train`).
packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-pthread
  libcaf-dev libcapnp-dev capnproto libboost-dev
  doctest-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libspdlog-dev
  libcpp-httplib-dev prometheus-cpp-dev
  libpcre2-dev libsentencepiece-dev sentencepiece
  iproute2 bible-kjv curl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm from Debian unless a node with its npm is there already
# (NodeSource's nodejs carries npm, and Debian's npm package conflicts with it).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The corpus as plain text, one verse a line, without the verse references.
corpus="$root/data/kjv.txt"
if [[ ! -s "$corpus" ]]; then
  mkdir -p "$root/data"
  bible -f "gen1:1-rev22:21" | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$corpus.partial"
  mv "$corpus.partial" "$corpus"
  echo "setup: wrote the King James Bible to $corpus ($(wc -c < "$corpus") bytes)"
fi

jobs="$(nproc)"
# Paths relative to the checkout in ccache's keys: a fresh clone elsewhere
# (CI) reuses what an earlier build compiled.
export CCACHE_BASEDIR="$root"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DORRERY_WERROR="${ORRERY_WERROR:-OFF}" >/dev/null
echo "setup: building in $build with $jobs job(s)"
cmake --build "$build" -j "$jobs"

# The README's tour types `orrery`: as root, link it into /usr/local/bin (on
# sudo's secure_path too, for the testbed's root-only commands), replacing
# only a link, never an orrery installed some other way.
link=/usr/local/bin/orrery
if [[ $EUID -eq 0 && -d /usr/local/bin && ( ! -e "$link" || -L "$link" ) ]]; then
  ln -sfn "$build/deploy/orrery" "$link"
  echo "setup: $link -> $build/deploy/orrery"
else
  echo "setup: to type \`orrery\`: export PATH=\"$build/deploy:\$PATH\""
fi

# The openai npm client `orrery serve`'s tests drive it with, at the version
# package-lock.json pins (again only when the lock changed).
if [[ "$job" == test ]]; then
  clients="$root/test/clients"
  if [[ ! -f "$clients/node_modules/.package-lock.json" || "$clients/package-lock.json" -nt "$clients/node_modules/.package-lock.json" ]]; then
    echo "setup: npm ci in $clients"
    (cd "$clients" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

case "$job" in
  demo) cd "$root" && exec "$build/deploy/orrery" demo ;;
  test) exec ctest --test-dir "$build" --output-on-failure -j "$jobs" ;;
  build) echo "setup: built $build/deploy/orrery" ;;
esac
