#include "compute/safetensors.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "compute/model_error.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::element_type;
using orrery::test::temp_dir;

namespace {

tensor_source counting_tensor(const std::string& name, element_type type, std::vector<std::int64_t> shape) {
  tensor_source t{name, type, std::move(shape), {}};
  auto n = t.nbytes();
  t.fill = [n](std::byte* out) {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 7 + 3) & 0xff);
  };
  return t;
}

// Writes a file made of an 8-byte length, `header` and `data_bytes` zero bytes.
std::filesystem::path raw_file(const temp_dir& dir, std::uint64_t declared_length, const std::string& header,
                               std::size_t data_bytes) {
  auto path = dir / "raw.safetensors";
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((declared_length >> (8 * i)) & 0xff));
  out << header << std::string(data_bytes, '\0');
  return path;
}

std::string open_error(const std::filesystem::path& path) {
  try {
    safetensors_file::open(path);
  } catch (const model_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("writer -> reader round trip keeps every dtype's bytes, shapes and metadata") {
  temp_dir dir;
  std::vector<tensor_source> tensors = {counting_tensor("a.f32", element_type::f32, {3, 5}),
                                        counting_tensor("b.f16", element_type::f16, {7}),
                                        counting_tensor("c.bf16", element_type::bf16, {2, 3, 4}),
                                        counting_tensor("d.empty", element_type::f32, {0, 4})};
  write_safetensors(dir / "x.safetensors", tensors, {{"format", "pt"}});
  auto file = safetensors_file::open(dir / "x.safetensors");
  CHECK(file->tensors().size() == 4);
  CHECK(file->metadata().at("format") == "pt");
  for (const auto& t : tensors) {
    const tensor_view* view = file->find(t.name);
    REQUIRE(view != nullptr);
    CHECK(view->type == t.type);
    CHECK(view->shape == t.shape);
    REQUIRE(view->nbytes == t.nbytes());
    std::vector<std::byte> expected(t.nbytes());
    t.fill(expected.data());
    CHECK(std::memcmp(view->data, expected.data(), expected.size()) == 0);
  }
  CHECK(file->find("missing") == nullptr);
}

TEST_CASE("the writer puts larger elements first, so a mixed-dtype file stays aligned") {
  temp_dir dir;
  write_safetensors(dir / "x.safetensors",
                    {counting_tensor("odd.f16", element_type::f16, {3}), counting_tensor("one.f32", element_type::f32, {1})});
  auto file = safetensors_file::open(dir / "x.safetensors");
  CHECK(file->find("one.f32")->data < file->find("odd.f16")->data);
  CHECK(file->find("odd.f16")->nbytes == 6);
}

TEST_CASE("the header is padded to 8 bytes so tensor data starts aligned") {
  temp_dir dir;
  write_safetensors(dir / "x.safetensors", {counting_tensor("odd_name_x", element_type::f32, {1})});
  std::ifstream in(dir / "x.safetensors", std::ios::binary);
  std::uint64_t length = 0;
  in.read(reinterpret_cast<char*>(&length), 8);
  CHECK(length % 8 == 0);
}

TEST_CASE("malformed safetensors files get one error naming the file and the problem") {
  temp_dir dir;
  const std::string good = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

  SUBCASE("shorter than the length field") {
    auto path = dir / "short.safetensors";
    std::ofstream(path) << "abc";
    auto error = open_error(path);
    CHECK(error.find("short.safetensors") != std::string::npos);
    CHECK(error.find("truncated") != std::string::npos);
  }
  SUBCASE("header length beyond the file") {
    auto error = open_error(raw_file(dir, 1000, good, 8));
    CHECK(error.find("raw.safetensors") != std::string::npos);
    CHECK(error.find("header length 1000 runs beyond the file (" + std::to_string(8 + good.size() + 8) + " bytes)") !=
          std::string::npos);
  }
  SUBCASE("header length over HF's 100 MB limit, in a file that large") {
    auto path = raw_file(dir, 100'000'001, good, 8);
    std::filesystem::resize_file(path, 100'000'100);  // sparse: costs no disk
    auto error = open_error(path);
    CHECK(error.find("raw.safetensors: header length 100000001 exceeds the 100000000-byte limit") !=
          std::string::npos);
    CHECK(error.find("runs beyond") == std::string::npos);
  }
  SUBCASE("header is not JSON") {
    std::string junk = "{not json at all";
    CHECK(open_error(raw_file(dir, junk.size(), junk, 0)).find("not valid JSON") != std::string::npos);
  }
  SUBCASE("data truncated after the header") {
    CHECK(open_error(raw_file(dir, good.size(), good, 4)).find("outside the 4-byte data section") != std::string::npos);
  }
  SUBCASE("shape and byte length disagree") {
    std::string header = R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
    CHECK(open_error(raw_file(dir, header.size(), header, 8)).find("need 12 bytes but data_offsets span 8") !=
          std::string::npos);
  }
  SUBCASE("dtype orrery does not load") {
    std::string header = R"({"t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
    CHECK(open_error(raw_file(dir, header.size(), header, 8)).find("unsupported dtype 'I64'") != std::string::npos);
  }
  SUBCASE("overlapping tensors") {
    std::string header =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
    CHECK(open_error(raw_file(dir, header.size(), header, 12)).find("overlap") != std::string::npos);
  }
  SUBCASE("a tensor starting mid-element") {
    std::string header =
        R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
    auto error = open_error(raw_file(dir, header.size(), header, 10));
    CHECK(error.find("raw.safetensors: tensor 'b' data_offsets [2, 10) start at byte 2, not a multiple of its 4-byte F32 "
                     "elements (unaligned)") != std::string::npos);
  }
  SUBCASE("a gap between tensors") {
    std::string header =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})";
    CHECK(open_error(raw_file(dir, header.size(), header, 24))
              .find("raw.safetensors: bytes [8, 16) of the data section belong to no tensor (after 'a', before 'b' at "
                    "data_offsets [16, 24))") != std::string::npos);
  }
  SUBCASE("data before the first tensor") {
    std::string header = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
    CHECK(open_error(raw_file(dir, header.size(), header, 16))
              .find("bytes [0, 8) of the data section belong to no tensor (before 't' at data_offsets [8, 16))") !=
          std::string::npos);
  }
  SUBCASE("bytes left after the last tensor") {
    CHECK(open_error(raw_file(dir, good.size(), good, 12))
              .find("raw.safetensors: bytes [8, 12) of the 12-byte data section belong to no tensor (after 't')") !=
          std::string::npos);
  }
  SUBCASE("a FIFO or a directory in place of the file") {
    auto fifo = dir / "fifo.safetensors";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // Held open for writing, so that a loader without the check does not
    // block in open() but reads an empty file instead.
    int writer = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK);
    REQUIRE(writer >= 0);
    CHECK(open_error(fifo).find("fifo.safetensors: is a FIFO, not a regular file") != std::string::npos);
    ::close(writer);
    std::filesystem::create_directory(dir / "dir.safetensors");
    CHECK(open_error(dir / "dir.safetensors").find("dir.safetensors: is a directory, not a regular file") !=
          std::string::npos);
  }
  SUBCASE("missing fields") {
    std::string header = R"({"t":{"dtype":"F32","shape":[2]}})";
    CHECK(open_error(raw_file(dir, header.size(), header, 8)).find("needs dtype, shape and data_offsets") !=
          std::string::npos);
  }
  SUBCASE("missing file") {
    CHECK(open_error(dir / "nope.safetensors").find("cannot open") != std::string::npos);
  }
}
