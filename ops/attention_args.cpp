#include "ops/attention_args.h"

#include <torch/csrc/autograd/custom_function.h>

#include <array>

namespace dilated_attention {
namespace {

struct SchemaArg {
  const char* type;
  const char* name;
  const char* default_value;
};

constexpr std::array<SchemaArg, AttentionArgs::kNumSchemaArgs> kAttentionArgsSchema{{
    {"int[]", "segment_lengths", nullptr},
    {"int[]", "dilation_rates", nullptr},
    {"float", "dropout_p", "0.0"},
    {"bool", "is_causal", "False"},
    {"float?", "scale", "None"},
}};

}  // namespace

std::string attention_args_schema(SchemaDefaults defaults) {
  std::string schema;
  for (const auto& arg : kAttentionArgsSchema) {
    if (!schema.empty()) schema += ", ";
    schema += std::string(arg.type) + " " + arg.name;
    if (defaults == SchemaDefaults::kWith && arg.default_value) {
      schema += std::string("=") + arg.default_value;
    }
  }
  return schema;
}

void AttentionArgs::save(torch::autograd::AutogradContext* ctx) const {
  ctx->saved_data["segment_lengths"] = segment_lengths;
  ctx->saved_data["dilation_rates"] = dilation_rates;
  ctx->saved_data["dropout_p"] = dropout_p;
  ctx->saved_data["is_causal"] = is_causal;
  ctx->saved_data["scale"] = scale;
}

AttentionArgs AttentionArgs::load(torch::autograd::AutogradContext* ctx) {
  auto& saved = ctx->saved_data;
  return {saved.at("segment_lengths").toIntVector(), saved.at("dilation_rates").toIntVector(),
          saved.at("dropout_p").toDouble(), saved.at("is_causal").toBool(),
          saved.at("scale").toOptional<double>()};
}

}  // namespace dilated_attention
