#include "actors/model_identity.hpp"

#include <cstdio>
#include <map>

#include "compute/model_fingerprint.hpp"

namespace orrery::actors {

std::vector<model_file> identify_model(const std::filesystem::path& dir) {
  std::vector<model_file> files;
  for (const auto& path : compute::model_content_files(dir))
    files.push_back({path.filename().string(), static_cast<std::uint64_t>(std::filesystem::file_size(path)),
                     compute::content_hash(path)});
  return files;
}

std::string model_difference(const std::vector<model_file>& expected, const std::vector<model_file>& found) {
  std::map<std::string, const model_file*> theirs;
  for (const auto& f : found) theirs[f.name] = &f;
  for (const auto& mine : expected) {
    auto it = theirs.find(mine.name);
    if (it == theirs.end()) return mine.name + " is missing";
    const auto& other = *it->second;
    if (other.bytes != mine.bytes)
      return mine.name + " has " + std::to_string(other.bytes) + " bytes, the client's " + std::to_string(mine.bytes);
    if (other.hash != mine.hash) return mine.name + " holds other bytes (same size, another content hash)";
    theirs.erase(it);
  }
  if (!theirs.empty()) return theirs.begin()->first + " is there but not in the client's copy";
  return {};
}

std::string model_fingerprint(const std::vector<model_file>& files) {
  std::string out;
  char hash[17];
  for (const auto& f : files) {
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(f.hash));
    out += f.name + ":" + std::to_string(f.bytes) + ":" + hash + ";";
  }
  return out;
}

}  // namespace orrery::actors
