#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "messages/checksum.hpp"

using namespace orrery::messages;

namespace {

std::vector<std::byte> random_bytes(std::size_t size, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> bytes(size);
  for (auto& b : bytes) b = std::byte(rng() & 0xFF);
  return bytes;
}

std::uint32_t checksum_in_pieces(const std::vector<std::byte>& bytes, bool hardware, std::mt19937_64& rng) {
  frame_checksum sum(hardware);
  std::size_t at = 0;
  while (at < bytes.size()) {
    auto piece = std::min<std::size_t>(bytes.size() - at, rng() % 100);
    sum.update(bytes.data() + at, piece);
    at += piece;
  }
  return sum.value();
}

}  // namespace

TEST_CASE("the AVX2 and portable checksums agree for every size and any split") {
  std::mt19937_64 rng(7);
  for (std::size_t size : {0, 1, 7, 8, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 4096, 65537}) {
    auto bytes = random_bytes(size, size);
    auto whole = checksum_of(bytes.data(), bytes.size());
    CAPTURE(size);
    CHECK(checksum_in_pieces(bytes, false, rng) == whole);
    CHECK(checksum_in_pieces(bytes, true, rng) == whole);
  }
}

TEST_CASE("the checksum sees flipped bits, swapped words and the length") {
  auto bytes = random_bytes(4096, 1);
  auto base = checksum_of(bytes.data(), bytes.size());
  for (std::size_t bit : {0, 9, 255, 8 * 4095 + 7}) {
    auto flipped = bytes;
    flipped[bit / 8] ^= std::byte(1 << (bit % 8));
    CHECK(checksum_of(flipped.data(), flipped.size()) != base);
  }
  auto swapped = bytes;
  std::swap_ranges(swapped.begin(), swapped.begin() + 8, swapped.begin() + 8);
  CHECK(checksum_of(swapped.data(), swapped.size()) != base);
  // Blocks 64 bytes apart feed the same lanes: only the running sums see the order.
  auto reordered = bytes;
  std::swap_ranges(reordered.begin(), reordered.begin() + 64, reordered.begin() + 64);
  CHECK(checksum_of(reordered.data(), reordered.size()) != base);
  std::vector<std::byte> zeros(64);
  CHECK(checksum_of(zeros.data(), 63) != checksum_of(zeros.data(), 64));
  CHECK(checksum_of(zeros.data(), 0) != checksum_of(zeros.data(), 64));
}
