// The visionzip operator library: every schema, defined once.
//
// `zip_tokens`, `attention_importance` and their packed variable-length forms `zip_tokens_varlen` and
// `attention_importance_varlen` are the public ops. The underscored ops are their backends,
// `_<op>_<backend>`: `cpu` (C++, csrc/<op>_cpu.cpp), `cuda` (CUDA C++, csrc/<op>_cuda.cu) and `triton`
// (a Python kernel, visionzip_kernels/ops/<op>/triton.py). The public ops' kernels, every fake kernel
// and the Triton kernels are registered from Python (visionzip_kernels/backends.py), where each op's
// arguments are validated once before any backend runs.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(visionzip, m) {
  // `bool? has_cls`: PyTorch's argument parser turns None into False for a plain `bool`; optional,
  // None reaches the validation, which rejects it as the Python function does.
  m.def(
      "zip_tokens(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool? has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "_zip_tokens_cpu(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "_zip_tokens_cuda(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "_zip_tokens_triton(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  // The gradient of every zip_tokens op with respect to `hidden` (csrc/zip_tokens_autograd.cpp);
  // `metric_source` is `keys`, or `hidden` when no keys were given.
  m.def(
      "_zip_tokens_hidden_grad(Tensor grad_tokens, Tensor attn, Tensor metric_source, bool keys_given, "
      "int k_dom, int k_ctx, bool has_cls, int[] hidden_size, ScalarType hidden_dtype) -> Tensor");
  m.def(
      "attention_importance(Tensor q, Tensor k, bool has_cls=True, float? scale=None, *, "
      "Tensor? lse=None) -> Tensor");
  m.def(
      "_attention_importance_cuda(Tensor q, Tensor k, bool has_cls, float scale, *, "
      "Tensor? lse=None) -> Tensor");
  m.def(
      "_attention_importance_triton(Tensor q, Tensor k, bool has_cls, float scale, *, "
      "Tensor? lse=None) -> Tensor");
  // Packed batches of n segments: `seqlens` (n sizes) and the per-segment budgets are host ints.
  m.def(
      "zip_tokens_varlen(Tensor hidden, Tensor importance, Tensor cu_seqlens, int[] seqlens, int[] k_dom, "
      "int[] k_ctx, Tensor? keys=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_zip_tokens_varlen_cpu(Tensor hidden, Tensor importance, Tensor cu_seqlens, int[] seqlens, int[] k_dom, "
      "int[] k_ctx, Tensor? keys=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_zip_tokens_varlen_cuda(Tensor hidden, Tensor importance, Tensor cu_seqlens, int[] seqlens, int[] k_dom, "
      "int[] k_ctx, Tensor? keys=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_zip_tokens_varlen_triton(Tensor hidden, Tensor importance, Tensor cu_seqlens, int[] seqlens, int[] k_dom, "
      "int[] k_ctx, Tensor? keys=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "attention_importance_varlen(Tensor q, Tensor k, Tensor cu_seqlens, int[] seqlens, float? scale=None, *, "
      "Tensor? lse=None) -> Tensor");
  m.def(
      "_attention_importance_varlen_triton(Tensor q, Tensor k, Tensor cu_seqlens, int[] seqlens, float scale, *, "
      "Tensor? lse=None) -> Tensor");
}

// An importable module, so that `import visionzip_kernels._C` loads the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
