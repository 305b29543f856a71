// Describes a loaded Model to a device backend: its shape and views of its host weights
// (backend/model_desc.h), so the backend uploads them without knowing the model layer.
#pragma once

#include "tq/backend/model_desc.h"
#include "tq/model/llama.h"

namespace tq::model {

// The views borrow from `model`, which must outlive every use of the result.
backend::LlamaDesc describe_for_backend(const Model& model);

}  // namespace tq::model
