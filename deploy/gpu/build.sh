#!/usr/bin/env bash
# Run on a GPU machine (Ubuntu 24.04, CUDA 13, PyTorch 2.11 in python3), from
# the repository root, with .bundle/ carried (deploy/gpu/bundle.sh made it
# here):
#   deploy/gpu/build.sh [STEP...]     steps, in this order by default:
#     build  configure against PyTorch's libtorch and the bundle, build for sm_90
#     test   every test suite, the CUDA suite required to find the GPU
#     check  deploy/gpu/hf_reference.py check: logits and greedy tokens vs HF
#     bench  orrery bench compute --device cuda:0 on llama2-7b in bf16, beside
#            HF transformers' generate and the bandwidth bound
#   and, when named:
#     train  hf_reference.py train-check (orrery train's steps vs PyTorch + HF on
#            the CPU and the GPU) and train-bench (tokens/s beside a PyTorch
#            loop, `small`); needs data/kjv.txt carried
# Logs and JSON go to ${OUT:-build-gpu}: ctest.log, hf_check.json, bench_compute.json,
# train_check.json, train_bench.json.
set -euo pipefail
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(build test check bench)
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

work="${ORRERY_GPU_WORK:-/tmp/orrery-gpu}"  # models: 13.5 GB for llama2-7b
mkdir -p "$log_dir" "$work"
orrery="$build/deploy/orrery"

for step in "${steps[@]}"; do
  echo "== $step" >&2
  case "$step" in
    build)
      cmake -S . -B "$build" -G Ninja -DORRERY_WERROR=ON \
        -DCMAKE_PREFIX_PATH="$torch_prefix;$bundle;$bundle/lib/$arch/cmake" \
        -DCMAKE_LIBRARY_PATH="$bundle/lib/$arch" -DCMAKE_INCLUDE_PATH="$bundle/include" \
        -DCAPNP_EXECUTABLE="$bundle/bin/capnp" -DCAPNPC_CXX_EXECUTABLE="$bundle/bin/capnpc-c++" \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DTORCH_CUDA_ARCH_LIST=9.0 > "$log_dir/configure.log" 2>&1 || {
        tail -40 "$log_dir/configure.log"; exit 1; }
      grep -E "^-- orrery" "$log_dir/configure.log" || true
      cmake --build "$build" -j "$(nproc)" > "$log_dir/build.log" 2>&1 || {
        grep -E "error|FAILED" -A4 "$log_dir/build.log" | head -100; exit 1; } ;;
    test)
      # ORRERY_GPU_TESTS: a ctest -R regex to run only some suites.
      # ORRERY_GPU_MACHINE: no node or npm there (nothing outside is
      # reachable), so serve's openai-client check is CI's alone.
      ORRERY_GPU_MACHINE=1 ORRERY_REQUIRE_CUDA=1 ctest --test-dir "$build" --output-on-failure -j 6 ${ORRERY_GPU_TESTS:+-R "$ORRERY_GPU_TESTS"} \
        > "$log_dir/ctest.log" 2>&1 || {
        tail -60 "$log_dir/ctest.log"; exit 1; }
      tail -12 "$log_dir/ctest.log" ;;
    check)
      python3 "$root/deploy/gpu/hf_reference.py" check --orrery "$orrery" --work "$work/check" --device cuda:0 \
        > "$log_dir/hf_check.json" ;;
    bench)
      [[ -f "$work/llama2-7b/config.json" ]] ||
        "$orrery" model init --preset llama2-7b --dtype bf16 --max-file-mb 4000 --out "$work/llama2-7b" >/dev/null
      "$orrery" bench compute --model "$work/llama2-7b" --device cuda:0 --dtype bf16 --prompt-tokens 128 \
        --new-tokens 128 --repeats 3 --hf-script "$root/deploy/gpu/hf_reference.py" > "$log_dir/bench_compute.json"
      cat "$log_dir/bench_compute.json" ;;
    train)
      corpus="$root/data/kjv.txt"
      [[ -s "$corpus" ]] || { echo "build: $corpus is missing: carry data (setup.sh writes it)" >&2; exit 1; }
      python3 "$root/deploy/gpu/hf_reference.py" train-check --orrery "$orrery" --work "$work/train" --data "$corpus" \
        --devices cpu cuda:0 --presets tiny small > "$log_dir/train_check.json"
      python3 "$root/deploy/gpu/hf_reference.py" train-bench --orrery "$orrery" --work "$work/train" --data "$corpus" \
        --presets small --batch 8 --micro-batch 8 --length 256 --steps 10 > "$log_dir/train_bench.json"
      cat "$log_dir/train_check.json" "$log_dir/train_bench.json" ;;
    *) echo "build: unknown step '$step' (known: build test check bench train)" >&2; exit 2 ;;
  esac
done
