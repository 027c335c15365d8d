#include "messages/checksum.hpp"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace orrery::messages {
namespace {

constexpr std::size_t block_size = 32;

// Byte-at-a-time CRC32C (reflected Castagnoli polynomial); the portable path
// and the short tails and fold of the hardware path.
constexpr std::array<std::uint32_t, 256> make_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto crc_table = make_table();

std::uint32_t crc_bytes(std::uint32_t crc, const std::byte* data, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i)
    crc = crc_table[(crc ^ std::to_integer<std::uint32_t>(data[i])) & 0xFF] ^ (crc >> 8);
  return crc;
}

template <typename T>
std::uint32_t crc_value(std::uint32_t crc, T value) {
  std::array<std::byte, sizeof(T)> bytes;
  for (std::size_t i = 0; i < sizeof(T); ++i) bytes[i] = std::byte(value >> (8 * i) & 0xFF);
  return crc_bytes(crc, bytes.data(), bytes.size());
}

std::uint64_t load_le64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);  // x86 and every target we build for is little endian
  return v;
}

void blocks_portable(std::array<std::uint32_t, 4>& lanes, const std::byte* data, std::size_t blocks) {
  for (std::size_t b = 0; b < blocks; ++b, data += block_size)
    for (std::size_t j = 0; j < 4; ++j) lanes[j] = crc_bytes(lanes[j], data + 8 * j, 8);
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) void blocks_sse42(std::array<std::uint32_t, 4>& lanes, const std::byte* data,
                                                    std::size_t blocks) {
  std::uint64_t a = lanes[0], b = lanes[1], c = lanes[2], d = lanes[3];
  for (std::size_t i = 0; i < blocks; ++i, data += block_size) {
    a = _mm_crc32_u64(a, load_le64(data));
    b = _mm_crc32_u64(b, load_le64(data + 8));
    c = _mm_crc32_u64(c, load_le64(data + 16));
    d = _mm_crc32_u64(d, load_le64(data + 24));
  }
  lanes = {std::uint32_t(a), std::uint32_t(b), std::uint32_t(c), std::uint32_t(d)};
}
#endif

}  // namespace

frame_checksum::frame_checksum(bool use_hardware)
    : lanes_{~0u, ~0u, ~0u, ~0u}, hardware_(use_hardware && hardware_available()) {}

bool frame_checksum::hardware_available() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

void frame_checksum::consume_blocks(const std::byte* data, std::size_t blocks) {
#if defined(__x86_64__)
  if (hardware_) return blocks_sse42(lanes_, data, blocks);
#endif
  blocks_portable(lanes_, data, blocks);
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
    consume_blocks(pending_.data(), 1);
    pending_size_ = 0;
  }
  consume_blocks(data, size / block_size);
  pending_size_ = size % block_size;
  std::memcpy(pending_.data(), data + size - pending_size_, pending_size_);
}

std::uint32_t frame_checksum::value() const {
  auto lanes = lanes_;
  lanes[0] = crc_bytes(lanes[0], pending_.data(), pending_size_);
  std::uint32_t crc = ~0u;
  for (auto lane : lanes) crc = crc_value(crc, lane);
  return ~crc_value(crc, size_);
}

std::uint32_t checksum_of(const std::byte* data, std::size_t size) {
  frame_checksum sum;
  sum.update(data, size);
  return sum.value();
}

}  // namespace orrery::messages
