// Small pieces every handler shares: cpp-httplib itself, writing a JSON body or an OpenAI
// error, and request ids.
#pragma once

#include <httplib.h>

#include <string>

#include <nlohmann/json.hpp>

#include "tq/server/openai_schema.h"

namespace tq::server {

void send_json(httplib::Response& res, int status, const nlohmann::json& body);
void send_error(httplib::Response& res, const ApiError& e);
ApiError server_error(int status, std::string message, std::string code = {});
// "chatcmpl-" + 24 random hex digits.
std::string random_id(const char* prefix);

}  // namespace tq::server
