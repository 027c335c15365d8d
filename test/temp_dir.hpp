#pragma once
// A fresh directory under the system temp dir, removed with everything in it
// when the test ends.

#include <ftw.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>

namespace orrery::test {

class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("orrery-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    remove_tree(path_);
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() { remove_tree(path_); }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  // Not std::filesystem::remove_all: PyTorch's CUDA wheels export their own
  // copy of it from libtorch.so, which the dynamic linker binds first and
  // which crashes (a null call) on the GPU machines. Depth first, links not
  // followed.
  static void remove_tree(const std::filesystem::path& root) {
    ::nftw(
        root.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return std::remove(path); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }

  std::filesystem::path path_;
};

}  // namespace orrery::test
