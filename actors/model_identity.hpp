#pragma once
// A model's identity as the cluster compares it: its directory's content
// files (compute/model_fingerprint.hpp) with their sizes and hashes. The
// client sends its copy's identity with every stage assignment; a node checks
// its own copy against it before loading, and shares loaded weights between
// sessions only under the same identity.

#include <filesystem>
#include <string>
#include <vector>

#include "messages/types.hpp"

namespace orrery::actors {

/// The content files of the model directory `dir`; throws
/// compute::model_error naming the file that cannot be read.
std::vector<model_file> identify_model(const std::filesystem::path& dir);

/// Empty when `found` (a node's copy) holds the bytes of `expected` (the
/// client's); otherwise the first difference, naming the file.
std::string model_difference(const std::vector<model_file>& expected, const std::vector<model_file>& found);

/// The identity as one string: equal exactly when the files are.
std::string model_fingerprint(const std::vector<model_file>& files);

}  // namespace orrery::actors
