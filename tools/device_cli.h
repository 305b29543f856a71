// --device for the subcommands that run a model (run, ppl, serve, the benches...): "auto"
// (default: cuda when this build has CUDA and a GPU is visible, else cpu), "cpu" or "cuda" (the
// GPU forward pass, backend/device_model.h), and the helper that puts a loaded model on the GPU
// with a clear error when this build or this machine has none.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "tq/backend/device_info.h"
#include "tq/backend/device_model.h"
#include "tq/kv/kv_config.h"
#include "tq/model/llama.h"
#include "tq/model/model_desc.h"

namespace tq::tools {

struct DeviceFlag {
  std::string name = "auto";

  void add_to(CLI::App* cmd) {
    cmd->add_option("--device", name,
                    "cpu, cuda (the whole forward pass on the GPU), or auto: cuda when this build "
                    "has CUDA and a GPU is visible, else cpu")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  }
  bool cuda() const { return name == "cuda" || (name == "auto" && gpu_visible()); }
  // "cpu" or "cuda": what auto became.
  const char* resolved() const { return cuda() ? "cuda" : "cpu"; }

  // auto on a machine with a GPU stays on the CPU when the command's options need it (`on_gpu`
  // says whether the GPU path takes them, e.g. DeviceModelOptions::validate of its KV config),
  // with the reason on stderr; an explicit --device cuda gets the error where it opens the GPU.
  void settle(const Status& on_gpu) {
    if (name != "auto" || on_gpu.ok() || !gpu_visible()) return;
    std::fprintf(stderr, "tq: --device auto: running on the CPU: %s\n", on_gpu.message().c_str());
    name = "cpu";
  }
  // The same check for a KV configuration.
  void settle(const kv::KvConfig& kv) {
    backend::DeviceModelOptions o;
    o.kv = kv;
    settle(o.validate());
  }

  // Whether this build has CUDA and a device is visible (asked once per process).
  static bool gpu_visible() {
    static const bool visible = [] {
      if (!backend::cuda_built()) return false;
      const auto devices = backend::list_cuda_devices();
      return devices.ok() && !devices->empty();
    }();
    return visible;
  }

  // --gpu-weights, on the subcommands that pass it to open_cuda_model.
  std::string weights = "f16";
  void add_weights_to(CLI::App* cmd) {
    cmd->add_option("--gpu-weights", weights,
                    "f16 (every matrix dequantized at upload), or quant: Q4_0/Q8_0 matrices stay "
                    "blocks on the GPU, multiplied as stored (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"f16", "quant"}));
  }
  backend::DeviceWeights device_weights() const {
    return weights == "quant" ? backend::DeviceWeights::kQuantized : backend::DeviceWeights::kF16;
  }

  // --gpu-graphs and --gpu-write (A/B switches of the decode path; bench decode).
  std::string graphs = "on";
  std::string overlap = "on";
  std::string write = "auto";
  std::string activations = "q8";
  std::string window_stream = "on";
  std::string split_by_length = "on";
  std::string merge = "attention";
  void add_tuning_to(CLI::App* cmd) {
    cmd->add_option("--gpu-merge", merge,
                    "attention: the last thread block of each sequence and KV head merges its "
                    "split-K partials (no sinks or window); kernel: a merge kernel after the "
                    "attention kernel (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"attention", "kernel"}));
    cmd->add_option("--gpu-split-by-length", split_by_length,
                    "on: batched decode attention shares its thread blocks among sequences of "
                    "mixed lengths by length (where it pays); off: every sequence cut as the "
                    "longest (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"on", "off"}));
    cmd->add_option("--gpu-window-stream", window_stream,
                    "with --kv-sinks / --kv-window: attention over the f16 rows on a second "
                    "stream beside the attention over the pages (on), or after it (off) "
                    "(--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"on", "off"}));
    cmd->add_option("--gpu-activations", activations,
                    "with --gpu-weights quant: the Q4_0/Q8_0 GEMVs take 8-bit activations per 32 "
                    "columns (q8: integer dot products, as the CPU matmuls and llama.cpp) or f16 "
                    "ones (f32 products, precise) (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"q8", "f16"}));
    cmd->add_option("--gpu-graphs", graphs,
                    "on: each decode step replays a CUDA graph of the whole pass; off: every "
                    "kernel launched from the host (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"on", "off"}));
    cmd->add_option("--gpu-overlap", overlap,
                    "on: the quantized-weight GEMVs start loading weights while the kernel "
                    "before them runs (programmatic dependent launch, sm_90); off: plain "
                    "stream order (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"on", "off"}));
    cmd->add_option("--gpu-write", write,
                    "K/V quantize-on-write kernel: auto (float32), or legacy (float64, bytes "
                    "equal to the CPU codec's), team, warp (--device cuda)")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "legacy", "team", "warp"}));
  }

  // The device options these flags choose (the cache shape is open_cuda_model's).
  backend::DeviceModelOptions tuning() const {
    backend::DeviceModelOptions o;
    o.weights = device_weights();
    o.cuda_graphs = graphs == "on";
    o.overlap_launches = overlap == "on";
    o.window_stream = window_stream == "on";
    o.split_by_length = split_by_length == "on";
    o.merge_in_attention = merge == "attention";
    o.int8_activations = activations == "q8";
    o.write_kernel = write == "legacy" ? backend::DeviceWriteKernel::kLegacy
                     : write == "team" ? backend::DeviceWriteKernel::kTeam
                     : write == "warp" ? backend::DeviceWriteKernel::kWarp
                                       : backend::DeviceWriteKernel::kAuto;
    return o;
  }
};

// The model on CUDA device 0 with `kv` for its cache: `n_seqs` slots of `ctx` tokens, passes of
// at most `max_batch` tokens; the rest of the options (weights, graphs, ...) from `tuning`.
inline Expected<std::unique_ptr<backend::DeviceModel>> open_cuda_model(
    const model::Model& m, const kv::KvConfig& kv, int ctx, int max_batch, int n_seqs = 1,
    backend::DeviceModelOptions tuning = {}) {
  if (!backend::cuda_built())
    return unsupported(
        "--device cuda: this tq was built without CUDA (configure with -DTQ_CUDA=ON)");
  const auto devices = backend::list_cuda_devices();
  if (!devices.ok()) return unsupported("--device cuda: " + devices.status().message());
  if (devices->empty()) return unsupported("--device cuda: no CUDA device is visible");
  backend::DeviceModelOptions o = std::move(tuning);
  o.kv = kv;
  o.max_context = ctx;
  o.max_batch = max_batch;
  o.max_sequences = n_seqs;
  if (kv.value_scaling) {  // as make_paged_cache: the value scales weigh by W_o's columns
    TQ_ASSIGN_OR_RETURN(o.value_weights, m.value_output_weights());
  }
  auto dm = backend::create_cuda_model(model::describe_for_backend(m), o);
  if (!dm.ok()) return dm.status().with_context("--device cuda");
  return dm;
}

}  // namespace tq::tools
