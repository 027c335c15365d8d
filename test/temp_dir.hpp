#pragma once
// A fresh directory under the system temp dir, removed with everything in it
// when the test ends.

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>

#include "base/remove_tree.hpp"

namespace orrery::test {

class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("orrery-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    orrery::remove_tree(path_);
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() { orrery::remove_tree(path_); }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace orrery::test
