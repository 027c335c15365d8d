#pragma once
// Removes a directory and everything in it (or a file), like
// std::filesystem::remove_all — which must not be called: PyTorch's CUDA
// wheels export their own copy of it from libtorch.so, which the dynamic
// linker binds first and which crashes (a null call) on the GPU machines.
// Depth first, links not followed (a link is removed, not its target).

#include <ftw.h>

#include <cstdio>
#include <filesystem>

namespace orrery {

/// True when nothing is left at `root` (also when there was nothing).
inline bool remove_tree(const std::filesystem::path& root) {
  ::nftw(
      root.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return std::remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
  std::error_code ec;
  return !std::filesystem::exists(std::filesystem::symlink_status(root, ec));
}

}  // namespace orrery
