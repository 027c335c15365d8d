#pragma once
// Every model file orrery reads is named by a user or a topology file, so the
// path may be a FIFO, a directory or a device, or a file far larger than its
// kind ever is. Before this, a FIFO blocked the loader forever and a huge
// config.json was read whole before its error. Model files are opened here:
// without blocking, checked to be regular files, and JSON files read whole
// are refused above a stated size before a byte of them is read.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace orrery::compute {

/// An open regular file, closed on destruction.
class regular_file {
 public:
  /// Opens `path` read-only. The open does not block (O_NONBLOCK: a FIFO
  /// with no writer would otherwise hold it forever) and anything but a
  /// regular file is refused; throws model_error naming the path and what
  /// it is ("is a FIFO, not a regular file").
  explicit regular_file(const std::filesystem::path& path);
  ~regular_file();
  regular_file(const regular_file&) = delete;
  regular_file& operator=(const regular_file&) = delete;

  int descriptor() const { return fd_; }
  /// The size when it was opened.
  std::uint64_t size() const { return size_; }

 private:
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

/// config.json is a few kB; an index lists one ~100-byte line per tensor, so
/// 16 MiB holds over 150000 tensors, more than any published checkpoint has.
inline constexpr std::uint64_t max_model_json_bytes = std::uint64_t{16} << 20;

/// A tokenizer file carries its vocabulary and merges; HF's tokenizer.json for
/// 256k-entry vocabularies runs to tens of MB, so allow 64 MiB.
inline constexpr std::uint64_t max_tokenizer_json_bytes = std::uint64_t{64} << 20;

/// The JSON object in `path`; throws model_error naming the path when it is
/// not a regular file, is larger than `max_bytes` (checked before reading),
/// cannot be read, is not valid JSON or is not an object.
nlohmann::json read_json_object(const std::filesystem::path& path, std::uint64_t max_bytes);

}  // namespace orrery::compute
