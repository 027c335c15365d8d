#include "compute/safetensors.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <utility>

#include "compute/bounded_file.hpp"
#include "compute/message_text.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

using json = nlohmann::json;

// A header larger than this is not a model header but a corrupt length field;
// HF's reader uses the same 100 MB guard.
constexpr std::uint64_t max_header_bytes = 100'000'000;

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw model_error(path.string() + ": " + problem);
}

std::int64_t checked_numel(const std::filesystem::path& path, const std::string& name,
                           const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0) fail(path, "tensor '" + name + "' has a negative dimension");
    if (d != 0 && n > INT64_MAX / d) fail(path, "tensor '" + name + "' shape overflows");
    n *= d;
  }
  return n;
}

tensor_view parse_entry(const std::filesystem::path& path, const std::string& name,
                        const json& entry, const std::byte* data, std::uint64_t data_size) {
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
      !entry.contains("data_offsets"))
    fail(path, "tensor '" + name + "' needs dtype, shape and data_offsets");
  const auto& dtype_json = entry["dtype"];
  if (!dtype_json.is_string()) fail(path, "tensor '" + name + "' has a non-string dtype");
  auto type = element_type_from_safetensors(dtype_json.get<std::string>());
  if (!type)
    fail(path, "tensor '" + name + "' has unsupported dtype '" + dtype_json.get<std::string>() +
                   "' (orrery loads F32, F16, BF16)");
  tensor_view view;
  view.name = name;
  view.type = *type;
  const auto& shape = entry["shape"];
  const auto& offsets = entry["data_offsets"];
  if (!shape.is_array()) fail(path, "tensor '" + name + "' shape is not an array");
  for (const auto& d : shape) {
    if (!d.is_number_integer()) fail(path, "tensor '" + name + "' shape holds a non-integer");
    view.shape.push_back(d.get<std::int64_t>());
  }
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail(path, "tensor '" + name + "' data_offsets must be two non-negative integers");
  auto begin = offsets[0].get<std::uint64_t>();
  auto end = offsets[1].get<std::uint64_t>();
  if (begin > end || end > data_size)
    fail(path, "tensor '" + name + "' data_offsets [" + std::to_string(begin) + ", " +
                   std::to_string(end) + ") lie outside the " + std::to_string(data_size) +
                   "-byte data section (truncated file?)");
  auto numel = checked_numel(path, name, view.shape);
  auto expected = static_cast<std::uint64_t>(numel) * element_size(view.type);
  if (expected != end - begin)
    fail(path, "tensor '" + name + "' shape and dtype need " + std::to_string(expected) +
                   " bytes but data_offsets span " + std::to_string(end - begin));
  // from_blob reads the mapped bytes as elements, and an element that starts
  // mid-word is a header that disagrees with what was written (an empty
  // tensor has no element to misplace).
  if (end > begin && begin % element_size(view.type) != 0)
    fail(path, "tensor '" + name + "' data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ") start at byte " + std::to_string(begin) + ", not a multiple of its " +
                   std::to_string(element_size(view.type)) + "-byte " + std::string(safetensors_name(view.type)) +
                   " elements (unaligned)");
  view.data = data + begin;
  view.nbytes = end - begin;
  return view;
}

std::string span_text(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

// HF's reader accepts only tensors that tile the data section exactly (its
// "metadata incomplete buffer"): a gap, leading or trailing bytes mean the
// header and the data disagree, and the bytes read would not be the ones
// written (before this check such a file loaded and gave all-zero output).
void check_tiling(const std::filesystem::path& path, const std::map<std::string, tensor_view>& tensors,
                  const std::byte* data, std::uint64_t data_size) {
  std::vector<const tensor_view*> by_offset;
  for (const auto& [name, view] : tensors) by_offset.push_back(&view);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) {
    return std::pair(a->data, a->nbytes) < std::pair(b->data, b->nbytes);
  });
  std::uint64_t covered = 0;
  const tensor_view* previous = nullptr;
  for (const auto* view : by_offset) {
    const auto begin = static_cast<std::uint64_t>(view->data - data);
    if (begin < covered)
      fail(path, "tensors '" + previous->name + "' and '" + view->name + "' overlap (the second starts at " +
                     std::to_string(begin) + ", before the first ends at " + std::to_string(covered) + ")");
    if (begin > covered)
      fail(path, "bytes " + span_text(covered, begin) + " of the data section belong to no tensor (" +
                     (previous ? "after '" + previous->name + "', " : "") + "before '" + view->name +
                     "' at data_offsets " + span_text(begin, begin + view->nbytes) + ")");
    covered = begin + view->nbytes;
    previous = view;
  }
  if (covered != data_size)
    fail(path, "bytes " + span_text(covered, data_size) + " of the " + std::to_string(data_size) +
                   "-byte data section belong to no tensor" + (previous ? " (after '" + previous->name + "')" : ""));
}

}  // namespace

std::int64_t tensor_view::numel() const {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

std::size_t tensor_source::nbytes() const {
  return static_cast<std::size_t>(
             std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>())) *
         element_size(type);
}

std::shared_ptr<const safetensors_file> safetensors_file::open(const std::filesystem::path& path) {
  std::shared_ptr<safetensors_file> file(new safetensors_file());
  file->path_ = path;
  const regular_file source(path);
  const auto size = source.size();
  if (size < 8) fail(path, "truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, source.descriptor(), 0);
  if (map == MAP_FAILED) fail(path, errno_text("cannot map"));
  file->map_ = map;
  file->map_size_ = size;

  const auto* bytes = static_cast<const std::byte*>(map);
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i)
    header_size = (header_size << 8) | static_cast<std::uint64_t>(bytes[i]);
  if (header_size > max_header_bytes)
    fail(path, "header length " + std::to_string(header_size) + " exceeds the " + std::to_string(max_header_bytes) +
                   "-byte limit (a corrupt length field?)");
  if (header_size > size - 8)
    fail(path, "header length " + std::to_string(header_size) + " runs beyond the file (" + std::to_string(size) +
                   " bytes)");
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes + 8),
                         reinterpret_cast<const char*>(bytes + 8 + header_size));
  } catch (const json::parse_error& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");
  const std::byte* data = bytes + 8 + header_size;
  std::uint64_t data_size = size - 8 - header_size;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items())
        if (value.is_string()) file->metadata_[key] = value.get<std::string>();
      continue;
    }
    file->tensors_.emplace(name, parse_entry(path, name, entry, data, data_size));
  }
  check_tiling(path, file->tensors_, data, data_size);
  return file;
}

safetensors_file::~safetensors_file() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const tensor_view* safetensors_file::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<tensor_source>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Largest elements first, as HF's writer orders them: every tensor then
  // starts at a multiple of its element size, which the reader requires.
  std::vector<const tensor_source*> ordered;
  for (const auto& t : tensors) ordered.push_back(&t);
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](auto* a, auto* b) { return element_size(a->type) > element_size(b->type); });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto* t : ordered) {
    header[t->name] = {{"dtype", safetensors_name(t->type)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path, "cannot create file");
  std::uint64_t header_size = text.size();
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((header_size >> (8 * i)) & 0xff);
  out.write(length, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<std::byte> buffer;
  for (const auto* t : ordered) {
    buffer.resize(t->nbytes());
    t->fill(buffer.data());
    out.write(reinterpret_cast<const char*>(buffer.data()), static_cast<std::streamsize>(buffer.size()));
  }
  out.flush();
  if (!out) fail(path, "write failed (disk full?)");
}

}  // namespace orrery::compute
