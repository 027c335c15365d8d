#pragma once
// The safetensors format (8-byte little-endian header length, a JSON header
// of name -> {dtype, shape, data_offsets}, then the raw bytes), read through a
// read-only memory map so that loading a shard touches only the pages of the
// tensors it owns, and written tensor by tensor so a 7B checkpoint never has
// to sit in memory at once.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/element_type.hpp"

namespace orrery::compute {

/// A tensor inside a mapped file: no bytes are copied.
struct tensor_view {
  std::string name;
  element_type type;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t nbytes = 0;

  std::int64_t numel() const;
};

/// A validated, memory-mapped safetensors file. Opening checks the whole
/// header against the file size, so later reads cannot run past the map.
class safetensors_file {
 public:
  /// Maps and validates `path`; throws model_error naming the file and the
  /// problem (not a regular file, truncated, header over the 100 MB limit or
  /// beyond the file, bad JSON, dtype/shape/length disagreement, offsets out
  /// of range, unaligned for their dtype, or not tiling the data section
  /// exactly: overlaps, gaps, bytes before the first or after the last).
  static std::shared_ptr<const safetensors_file> open(const std::filesystem::path& path);

  ~safetensors_file();
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;

  /// nullptr when the file holds no tensor of that name.
  const tensor_view* find(const std::string& name) const;

  const std::map<std::string, tensor_view>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  safetensors_file() = default;

  std::filesystem::path path_;
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  std::map<std::string, tensor_view> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// One tensor to write: its bytes are produced on demand into a buffer of
/// exactly numel * element_size bytes.
struct tensor_source {
  std::string name;
  element_type type;
  std::vector<std::int64_t> shape;
  std::function<void(std::byte* out)> fill;

  std::size_t nbytes() const;
};

/// Writes `tensors` to `path` in the given order, stably sorted by element
/// size largest first so each starts aligned (header padded to 8 bytes and
/// tensors so ordered, as HF's writer does). Throws model_error when the file cannot be written.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<tensor_source>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace orrery::compute
