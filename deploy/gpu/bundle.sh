#!/usr/bin/env bash
# Run on a Debian 12 machine with the project's packages (deploy/setup.sh):
# copies what the GPU machines' image lacks — Debian's CAF, Cap'n Proto (with
# its compiler), yaml-cpp, CLI11, nlohmann-json, doctest, spdlog and fmt,
# cpp-httplib (with the brotli headers its flags ask for), prometheus-cpp,
# PCRE2, SentencePiece (with spm_train), and the Boost headers the sources
# actually include — into .bundle/usr, mirroring /usr so
# that the packages' CMake configs find their files relative to themselves.
# The folder is ignored by git; `run` carries it (deploy/gpu/build.sh uses it).
#
# Boost is 160 MB of headers, more than the 64 MiB a device run may carry, so
# only the closure of the Boost headers orrery's sources include is copied:
# the compiler lists it (`g++ -M`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${ORRERY_BUILD_DIR:-$root/build}"
out="$root/.bundle/usr"
arch=x86_64-linux-gnu

[[ -f "$build/messages/frame.capnp.h" ]] || { echo "bundle: build the project first (bash deploy/setup.sh): the Boost scan needs $build/messages/frame.capnp.h" >&2; exit 1; }
rm -rf "$root/.bundle"
mkdir -p "$out"

copy() {  # copy PATH... under $out, keeping the path below /usr and symlinks as they are
  for path in "$@"; do
    [[ -e "$path" ]] || { echo "bundle: $path is missing (is its Debian package installed?)" >&2; exit 1; }
    local target="$out/${path#/usr/}"
    mkdir -p "$(dirname "$target")"
    cp -a "$path" "$target"
  done
}

copy /usr/include/caf /usr/lib/$arch/libcaf_core.so* /usr/lib/$arch/libcaf_io.so*
copy /usr/include/capnp /usr/include/kj /usr/lib/$arch/cmake/CapnProto /usr/bin/capnp /usr/bin/capnpc-c++ \
     /usr/bin/capnpc-capnp /usr/lib/$arch/libcapnp*.so* /usr/lib/$arch/libkj*.so*
# Cap'n Proto's CMake targets come from pkg-config: its files, with the
# prefix made relative to where they lie.
copy /usr/lib/$arch/pkgconfig/capnp*.pc /usr/lib/$arch/pkgconfig/kj*.pc
copy /usr/lib/$arch/pkgconfig/cpp-httplib.pc /usr/lib/$arch/pkgconfig/libbrotli*.pc /usr/lib/$arch/pkgconfig/libpcre2-8.pc \
     /usr/lib/$arch/pkgconfig/sentencepiece.pc
sed -i 's|^prefix=.*|prefix=${pcfiledir}/../../..|' "$out"/lib/$arch/pkgconfig/*.pc
copy /usr/include/yaml-cpp /usr/lib/$arch/cmake/yaml-cpp /usr/lib/$arch/libyaml-cpp.so*
copy /usr/include/nlohmann /usr/share/cmake/nlohmann_json /usr/include/CLI /usr/share/cmake/CLI11
copy /usr/include/doctest /usr/lib/cmake/doctest
copy /usr/include/spdlog /usr/lib/$arch/cmake/spdlog /usr/lib/$arch/libspdlog.so* \
     /usr/include/fmt /usr/lib/$arch/cmake/fmt /usr/lib/$arch/libfmt.so*
# `orrery serve` and the tokenizers (their .pc files are among those above).
copy /usr/include/httplib.h /usr/lib/$arch/libcpp-httplib.so* /usr/include/brotli /usr/lib/$arch/libbrotli*.so*
copy /usr/include/prometheus /usr/lib/$arch/libprometheus-cpp-core.so*
copy /usr/include/pcre2.h /usr/lib/$arch/libpcre2-8.so*
copy /usr/include/sentencepiece_processor.h /usr/include/sentencepiece_trainer.h /usr/lib/$arch/libsentencepiece*.so* /usr/bin/spm_train
copy /usr/lib/$arch/cmake/Boost-1.74.0 /usr/lib/$arch/cmake/boost_headers-1.74.0 /usr/lib/$arch/cmake/BoostDetectToolset-1.74.0.cmake

# The Boost headers reachable from every source that includes Boost.
mapfile -t users < <(grep -rl --include='*.cpp' --include='*.hpp' 'boost/' "$root"/{messages,actors,deploy,test,examples} || true)
for source in "${users[@]}"; do
  g++ -std=c++17 -M -I"$root" -I"$build" "$source" 2>/dev/null || echo "bundle: cannot scan $source" >&2
done | tr ' \\' '\n\n' | grep '^/usr/include/boost/' | sort -u | while read -r header; do copy "$header"; done

echo "bundle: $(du -sh "$root/.bundle" | cut -f1) in $root/.bundle (carry it to the GPU machine: deploy/gpu/build.sh)"
