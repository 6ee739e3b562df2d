// Autograd of visionzip::zip_tokens and of its backend ops (_zip_tokens_cpu, _zip_tokens_cuda,
// _zip_tokens_triton), registered in C++ so that a call that needs no gradient costs no Python.
//
// `tokens` is linear in `hidden` once the plan is fixed; the gradient with respect to `hidden` is
// visionzip::_zip_tokens_hidden_grad (its kernel is Python, visionzip_kernels/ops/zip_tokens/
// autograd.py: it recomputes the plan with the reference, which every backend matches bit for bit).
// `attn` and `keys` only decide indices: their gradient is None, and `dominant_idx` is not
// differentiable.
//
// When no input requires a gradient, or grad mode is off, the kernel below calls the op under the
// autograd keys directly: no graph node, no saved tensors, nothing but the dispatcher's own work.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace visionzip {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The public op takes `bool? has_cls` (None reaches the Python validation, which rejects it); the
// backend ops take `bool`.
template <typename HasCls>
using ZipTokensOp = c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(
    const Tensor&, const Tensor&, int64_t, int64_t, const std::optional<Tensor>&, HasCls)>;

bool has_cls_value(bool has_cls) { return has_cls; }
bool has_cls_value(std::optional<bool> has_cls) { return has_cls.value_or(true); }

Tensor hidden_gradient(const Tensor& grad_tokens, const Tensor& attn, const Tensor& metric_source,
                       bool keys_given, int64_t k_dom, int64_t k_ctx, bool has_cls,
                       at::IntArrayRef hidden_size, at::ScalarType hidden_dtype) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("visionzip::_zip_tokens_hidden_grad", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, bool, int64_t,
                                           int64_t, bool, at::IntArrayRef, at::ScalarType)>();
  return op.call(grad_tokens, attn, metric_source, keys_given, k_dom, k_ctx, has_cls, hidden_size,
                 hidden_dtype);
}

// `Name` is the op's name; one class (and one cached operator handle) per op.
template <const char* Name, typename HasCls>
struct ZipTokensAutograd : torch::autograd::Function<ZipTokensAutograd<Name, HasCls>> {
  static const ZipTokensOp<HasCls>& op() {
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow(Name, "")
                                   .template typed<std::tuple<Tensor, Tensor>(
                                       const Tensor&, const Tensor&, int64_t, int64_t,
                                       const std::optional<Tensor>&, HasCls)>();
    return handle;
  }

  static std::tuple<Tensor, Tensor> call_below_autograd(const Tensor& hidden, const Tensor& attn,
                                                        int64_t k_dom, int64_t k_ctx,
                                                        const std::optional<Tensor>& keys,
                                                        HasCls has_cls) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op().call(hidden, attn, k_dom, k_ctx, keys, has_cls);
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& hidden, const Tensor& attn,
                               int64_t k_dom, int64_t k_ctx, const std::optional<Tensor>& keys,
                               HasCls has_cls) {
    auto [tokens, dominant_idx] = call_below_autograd(hidden, attn, k_dom, k_ctx, keys, has_cls);
    ctx->saved_data["k_dom"] = k_dom;
    ctx->saved_data["k_ctx"] = k_ctx;
    ctx->saved_data["has_cls"] = has_cls_value(has_cls);
    ctx->saved_data["keys_given"] = keys.has_value();
    ctx->saved_data["hidden_size"] = hidden.sizes().vec();
    ctx->saved_data["hidden_dtype"] = hidden.scalar_type();
    // Without keys the similarity metric is `hidden` itself; it only decides indices.
    ctx->save_for_backward({attn, keys.has_value() ? *keys : hidden});
    ctx->mark_non_differentiable({dominant_idx});
    return {tokens, dominant_idx};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_tokens = grads[0];
    Tensor grad_hidden;
    if (grad_tokens.defined()) {
      const auto saved = ctx->get_saved_variables();
      grad_hidden = hidden_gradient(
          grad_tokens, saved[0], saved[1], ctx->saved_data["keys_given"].toBool(),
          ctx->saved_data["k_dom"].toInt(), ctx->saved_data["k_ctx"].toInt(),
          ctx->saved_data["has_cls"].toBool(), ctx->saved_data["hidden_size"].toIntVector(),
          ctx->saved_data["hidden_dtype"].toScalarType());
    }
    return {grad_hidden, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }

  // The Autograd kernel: a graph node only when a gradient can flow.
  static std::tuple<Tensor, Tensor> kernel(const Tensor& hidden, const Tensor& attn, int64_t k_dom,
                                           int64_t k_ctx, const std::optional<Tensor>& keys,
                                           HasCls has_cls) {
    const bool needs_graph =
        at::GradMode::is_enabled() &&
        (hidden.requires_grad() || attn.requires_grad() || (keys.has_value() && keys->requires_grad()));
    if (!needs_graph) {
      return call_below_autograd(hidden, attn, k_dom, k_ctx, keys, has_cls);
    }
    const auto outputs = ZipTokensAutograd::apply(hidden, attn, k_dom, k_ctx, keys, has_cls);
    return {outputs[0], outputs[1]};
  }
};

constexpr char kPublic[] = "visionzip::zip_tokens";
constexpr char kCpu[] = "visionzip::_zip_tokens_cpu";
constexpr char kCuda[] = "visionzip::_zip_tokens_cuda";
constexpr char kTriton[] = "visionzip::_zip_tokens_triton";

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, Autograd, m) {
  m.impl("zip_tokens", &ZipTokensAutograd<kPublic, std::optional<bool>>::kernel);
  m.impl("_zip_tokens_cpu", &ZipTokensAutograd<kCpu, bool>::kernel);
  m.impl("_zip_tokens_cuda", &ZipTokensAutograd<kCuda, bool>::kernel);
  m.impl("_zip_tokens_triton", &ZipTokensAutograd<kTriton, bool>::kernel);
}

}  // namespace visionzip
