#include "compute/bounded_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "compute/message_text.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw model_error(path.string() + ": " + problem);
}

const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

// At most `file.size()` bytes: a file that grows while it is read stays
// within the size that was checked against the limit.
std::string read_all(const regular_file& file, const std::filesystem::path& path) {
  std::string text(file.size(), '\0');
  std::size_t filled = 0;
  while (filled < text.size()) {
    auto got = ::read(file.descriptor(), text.data() + filled, text.size() - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(path, errno_text("cannot read"));
    if (got == 0) break;
    filled += static_cast<std::size_t>(got);
  }
  text.resize(filled);
  return text;
}

}  // namespace

regular_file::regular_file(const std::filesystem::path& path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) fail(path, errno_text("cannot open"));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int error = errno;
    ::close(fd_);
    fail(path, errno_text("cannot stat", error));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    fail(path, std::string("is ") + file_kind(st.st_mode) + ", not a regular file");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
}

regular_file::~regular_file() { ::close(fd_); }

nlohmann::json read_json_object(const std::filesystem::path& path, std::uint64_t max_bytes) {
  regular_file file(path);
  if (file.size() > max_bytes)
    fail(path, std::to_string(file.size()) + " bytes, more than the " + std::to_string(max_bytes) +
                   "-byte limit for this file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_all(file, path));
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(path, "not a JSON object");
  return j;
}

}  // namespace orrery::compute
