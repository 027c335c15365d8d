#!/usr/bin/env bash
# Run on a GPU machine (Ubuntu 24.04, CUDA 13, PyTorch 2.11 in python3), from
# the repository root, with .bundle/ carried (deploy/gpu/bundle.sh made it
# here): configures orrery against PyTorch's libtorch and the bundled
# libraries, builds for sm_90 with Ninja, and runs the test suites. Writes the
# test log to ${OUT:-build-gpu}/ctest.log.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bundle="$root/.bundle/usr"
[[ -x "$bundle/bin/capnp" ]] || { echo "build: $bundle is missing: run deploy/gpu/bundle.sh on the Debian machine and carry .bundle" >&2; exit 1; }
arch=x86_64-linux-gnu
export PATH="$bundle/bin:$PATH"
export LD_LIBRARY_PATH="$bundle/lib/$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$bundle/lib/$arch/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
build="${ORRERY_GPU_BUILD_DIR:-$root/build-gpu}"
log_dir="${OUT:-$build}"

cmake -S . -B "$build" -G Ninja -DORRERY_WERROR=ON \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$bundle;$bundle/lib/$arch/cmake" \
  -DCMAKE_LIBRARY_PATH="$bundle/lib/$arch" -DCMAKE_INCLUDE_PATH="$bundle/include" \
  -DCAPNP_EXECUTABLE="$bundle/bin/capnp" -DCAPNPC_CXX_EXECUTABLE="$bundle/bin/capnpc-c++" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DTORCH_CUDA_ARCH_LIST=9.0 2>&1 | tail -20
cmake --build "$build" -j "$(nproc)" -- -k 0 2>&1 | grep -E "error|FAILED|warning|Linking" | head -80
ctest --test-dir "$build" --output-on-failure -j 4 > "$log_dir/ctest.log" 2>&1 && status=0 || status=$?
tail -30 "$log_dir/ctest.log"
exit $status
