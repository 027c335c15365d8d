#include "messages/checksum.hpp"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace orrery::messages {
namespace {

constexpr std::size_t block_size = 8 * frame_checksum::lanes;

std::uint64_t load_le64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);  // x86 and every target we build for is little endian
  return v;
}

std::uint64_t mix(std::uint64_t h, std::uint64_t value) {
  h ^= value;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

void blocks_portable(frame_checksum::lane_state& state, const std::byte* data, std::size_t blocks) {
  for (std::size_t b = 0; b < blocks; ++b, data += block_size)
    for (std::size_t j = 0; j < frame_checksum::lanes; ++j) {
      state.sum[j] += load_le64(data + 8 * j);
      state.sum_of_sums[j] += state.sum[j];
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void blocks_avx2(frame_checksum::lane_state& state, const std::byte* data,
                                                 std::size_t blocks) {
  // Lanes 0-3 and 4-7: one add per 32 bytes and lane group, plus one for the
  // running sums; nothing crosses lanes.
  auto* sum = reinterpret_cast<__m256i*>(state.sum.data());
  auto* sums = reinterpret_cast<__m256i*>(state.sum_of_sums.data());
  __m256i sum_low = _mm256_loadu_si256(sum), sum_high = _mm256_loadu_si256(sum + 1);
  __m256i sums_low = _mm256_loadu_si256(sums), sums_high = _mm256_loadu_si256(sums + 1);
  for (std::size_t b = 0; b < blocks; ++b, data += block_size) {
    sum_low = _mm256_add_epi64(sum_low, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data)));
    sum_high = _mm256_add_epi64(sum_high, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + 32)));
    sums_low = _mm256_add_epi64(sums_low, sum_low);
    sums_high = _mm256_add_epi64(sums_high, sum_high);
  }
  _mm256_storeu_si256(sum, sum_low);
  _mm256_storeu_si256(sum + 1, sum_high);
  _mm256_storeu_si256(sums, sums_low);
  _mm256_storeu_si256(sums + 1, sums_high);
}
#endif

}  // namespace

frame_checksum::frame_checksum(bool use_vector) : vector_(use_vector && vector_available()) {}

bool frame_checksum::vector_available() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

void frame_checksum::consume_blocks(lane_state& state, const std::byte* data, std::size_t blocks) const {
#if defined(__x86_64__)
  if (vector_) return blocks_avx2(state, data, blocks);
#endif
  blocks_portable(state, data, blocks);
}

void frame_checksum::update(const std::byte* data, std::size_t size) {
  if (size == 0) return;
  size_ += size;
  if (pending_size_ > 0) {
    std::size_t take = std::min(size, block_size - pending_size_);
    std::memcpy(pending_.data() + pending_size_, data, take);
    pending_size_ += take;
    data += take;
    size -= take;
    if (pending_size_ < block_size) return;
    consume_blocks(state_, pending_.data(), 1);
    pending_size_ = 0;
  }
  consume_blocks(state_, data, size / block_size);
  pending_size_ = size % block_size;
  std::memcpy(pending_.data(), data + size - pending_size_, pending_size_);
}

std::uint32_t frame_checksum::value() const {
  auto state = state_;
  if (pending_size_ > 0) {
    auto last = pending_;
    std::fill(last.begin() + static_cast<std::ptrdiff_t>(pending_size_), last.end(), std::byte{0});
    consume_blocks(state, last.data(), 1);
  }
  std::uint64_t h = mix(0, size_);
  for (std::size_t j = 0; j < lanes; ++j) h = mix(mix(h, state.sum[j]), state.sum_of_sums[j]);
  return static_cast<std::uint32_t>(h);
}

std::uint32_t checksum_of(const std::byte* data, std::size_t size) {
  frame_checksum sum;
  sum.update(data, size);
  return sum.value();
}

}  // namespace orrery::messages
