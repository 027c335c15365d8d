#pragma once
// The payload checksum of data-plane frames. It sits on the throughput path of
// both ends (the sender before writing, the receiver while reading), so it has
// to run well above loopback TCP speed: CRC32C over four interleaved lanes lets
// SSE4.2's `crc32` (3-cycle latency, one per cycle throughput) retire one
// 8-byte word per cycle instead of one per three in a single chain.

#include <array>
#include <cstddef>
#include <cstdint>

namespace orrery::messages {

/// Incremental frame checksum. Definition (portable and hardware paths agree
/// bit for bit): the payload is cut into 32-byte blocks; word j (8 bytes, little
/// endian) of every block feeds CRC32C lane j (4 lanes, each seeded ~0); the
/// trailing (size % 32) bytes feed lane 0 byte by byte; the result is the
/// CRC32C (seed ~0, final complement) of the four lanes (little endian u32)
/// followed by the total size (little endian u64). update() accepts any split.
class frame_checksum {
 public:
  /// @param use_hardware take the SSE4.2 path; only honoured where available.
  explicit frame_checksum(bool use_hardware = hardware_available());

  /// Feeds the next `size` bytes of the payload.
  void update(const std::byte* data, std::size_t size);

  /// The checksum of everything fed so far.
  std::uint32_t value() const;

  /// Whether this CPU has SSE4.2's crc32 instruction.
  static bool hardware_available();

 private:
  void consume_blocks(const std::byte* data, std::size_t blocks);

  std::array<std::uint32_t, 4> lanes_;
  std::array<std::byte, 32> pending_{};
  std::size_t pending_size_ = 0;
  std::uint64_t size_ = 0;
  bool hardware_;
};

/// The frame checksum of one contiguous buffer.
std::uint32_t checksum_of(const std::byte* data, std::size_t size);

}  // namespace orrery::messages
