#include "compute/model_fingerprint.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "compute/bounded_file.hpp"
#include "compute/message_text.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

// xxHash64's primes and round (Collet, "xxHash", spec v0.8): each lane
// absorbs every fourth 8-byte word.
constexpr std::uint64_t p1 = 0x9E3779B185EBCA87ull, p2 = 0xC2B2AE3D27D4EB4Full, p3 = 0x165667B19E3779F9ull,
                        p4 = 0x85EBCA77C2B2AE63ull, p5 = 0x27D4EB2F165667C5ull;

std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
std::uint64_t round_of(std::uint64_t lane, std::uint64_t word) { return rotl(lane + word * p2, 31) * p1; }

class streaming_hash {
 public:
  // Absorbs whole 32-byte blocks; the caller passes the tail to finish().
  void blocks(const unsigned char* data, std::size_t size) {
    for (std::size_t at = 0; at + 32 <= size; at += 32)
      for (int i = 0; i < 4; ++i) {
        std::uint64_t word;
        std::memcpy(&word, data + at + 8 * i, 8);
        lanes_[i] = round_of(lanes_[i], word);
      }
    total_ += size / 32 * 32;
  }
  std::uint64_t finish(const unsigned char* tail, std::size_t size) {
    std::uint64_t h = rotl(lanes_[0], 1) + rotl(lanes_[1], 7) + rotl(lanes_[2], 12) + rotl(lanes_[3], 18);
    for (auto lane : lanes_) h = (h ^ round_of(0, lane)) * p1 + p4;
    h += total_ + size;
    for (std::size_t i = 0; i < size; ++i) h = rotl(h ^ (tail[i] * p5), 11) * p1;
    h ^= h >> 33;
    h *= p2;
    h ^= h >> 29;
    h *= p3;
    return h ^ (h >> 32);
  }

 private:
  std::uint64_t lanes_[4] = {p1 + p2, p2, 0, 0 - p1};
  std::uint64_t total_ = 0;
};

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw model_error(path.string() + ": " + problem);
}

std::uint64_t hash_file(const std::filesystem::path& file) {
  regular_file in(file);
  streaming_hash hash;
  std::vector<unsigned char> buffer(std::size_t{4} << 20);
  std::size_t filled = 0;
  for (;;) {
    auto got = ::read(in.descriptor(), buffer.data() + filled, buffer.size() - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(file, errno_text("cannot read"));
    filled += static_cast<std::size_t>(got);
    if (got == 0 || filled == buffer.size()) {
      const std::size_t whole = filled / 32 * 32;
      hash.blocks(buffer.data(), whole);
      std::memmove(buffer.data(), buffer.data() + whole, filled - whole);
      filled -= whole;
      if (got == 0) break;
    }
  }
  return hash.finish(buffer.data(), filled);
}

}  // namespace

std::vector<std::filesystem::path> model_content_files(const std::filesystem::path& dir) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error))
    fail(dir, std::filesystem::exists(dir, error) ? "is not a model directory (not a directory)" : "does not exist");
  if (!std::filesystem::exists(dir / "config.json", error))
    fail(dir, "is not a model directory (no config.json)");
  std::vector<std::filesystem::path> files{dir / "config.json"};
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    const auto name = entry.path().filename().string();
    if (name == "model.safetensors.index.json" || entry.path().extension() == ".safetensors") files.push_back(entry.path());
  }
  if (error) fail(dir, "cannot list: " + error.message());
  std::sort(files.begin(), files.end());
  return files;
}

std::uint64_t content_hash(const std::filesystem::path& file) {
  // Size and mtime alone are not enough: mtime has a coarse clock and `cp -p`,
  // `rsync -a` or `tar x` set it on purpose, so a same-size replacement could
  // keep an old hash. The inode changes with a rename-replace, and the
  // status-change time is set by the kernel alone on every write.
  using key = std::tuple<std::string, std::int64_t, std::int64_t, std::int64_t, std::uint64_t, std::uint64_t,
                         std::int64_t, std::int64_t>;
  static std::mutex mutex;
  static std::map<key, std::uint64_t> known;
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) fail(file, errno_text("cannot stat"));
  const key k{std::filesystem::absolute(file).lexically_normal().string(),
              static_cast<std::int64_t>(st.st_size),
              static_cast<std::int64_t>(st.st_mtim.tv_sec),
              static_cast<std::int64_t>(st.st_mtim.tv_nsec),
              static_cast<std::uint64_t>(st.st_dev),
              static_cast<std::uint64_t>(st.st_ino),
              static_cast<std::int64_t>(st.st_ctim.tv_sec),
              static_cast<std::int64_t>(st.st_ctim.tv_nsec)};
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = known.find(k); it != known.end()) return it->second;
  }
  const auto hash = hash_file(file);
  std::lock_guard<std::mutex> lock(mutex);
  known[k] = hash;
  return hash;
}

}  // namespace orrery::compute
