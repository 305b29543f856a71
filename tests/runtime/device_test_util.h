// Shared set-up of the device-path tests (device_scheduler_test.cpp, device_prefix_test.cpp): a
// tiny model, KV configs with 16-token pages, scheduler options whose prefill chunks are the
// stand-in device's passes, and the stand-in device (cpu_device_model.h).
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "model/tiny_model.h"
#include "runtime/cpu_device_model.h"
#include "tq/quant/format.h"
#include "tq/runtime/scheduler.h"

namespace tq::test {

inline std::unique_ptr<model::Model> tiny() {
  return build_model(tiny_spec(model::Arch::kLlama, quant::GgmlType::kQ8_0, 23));
}

inline kv::KvConfig kv_config(const char* k, const char* v) {
  kv::KvConfig c;
  c.k_format = quant::parse_format(k).value();
  c.v_format = quant::parse_format(v).value();
  c.block_tokens = 16;
  return c;
}

inline runtime::SchedulerOptions options(int sessions, int context) {
  runtime::SchedulerOptions o;
  o.max_sessions = sessions;
  o.max_queue = 16;
  o.context = context;
  o.prefill_chunk = 8;
  // Room for a full chunk of every session: chunks never depend on when a request arrived, so
  // both paths split each prompt alike (a compressed cache's key means come from the first).
  o.step_tokens = 8 * sessions;
  return o;
}

// The stand-in device with `slots` slots of `context` tokens.
inline std::unique_ptr<CpuDeviceModel> device(const model::Model& m, const kv::KvConfig& kv,
                                              int slots, int context) {
  backend::DeviceModelOptions o;
  o.kv = kv;
  o.max_context = context;
  o.max_sequences = slots;
  o.max_batch = 8;  // the prefill chunk: one pass per chunk
  auto d = CpuDeviceModel::create(m, o);
  EXPECT_TRUE(d.ok()) << d.status().to_string();
  return d.ok() ? std::move(d).value() : nullptr;
}

}  // namespace tq::test
