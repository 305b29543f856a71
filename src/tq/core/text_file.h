// A whole text file into memory, with the errors a user can act on: missing, a directory, not
// readable.
#pragma once

#include <string>

#include "tq/core/status.h"

namespace tq {

Expected<std::string> read_text_file(const std::string& path);

}  // namespace tq
