#include "tq/core/text_file.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

namespace tq {

Expected<std::string> read_text_file(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) return not_found("no file '" + path + "'");
  if (std::filesystem::is_directory(st))
    return invalid_argument("'" + path + "' is a directory, not a text file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return io_error("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return io_error("cannot read '" + path + "'");
  return ss.str();
}

}  // namespace tq
