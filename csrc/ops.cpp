// The visionzip operator library: every schema, defined once.
//
// `zip_tokens` and `attention_importance` are the public ops. The underscored ops are their backends,
// `_<op>_<backend>`: `cpu` (C++, csrc/<op>_cpu.cpp), `cuda` (CUDA C++, csrc/<op>_cuda.cu) and `triton`
// (a Python kernel, visionzip_kernels/ops/<op>/triton.py). The public ops' kernels, every fake kernel
// and the Triton kernels are registered from Python (visionzip_kernels/backends.py), where each op's
// arguments are validated once before any backend runs.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(visionzip, m) {
  m.def(
      "zip_tokens(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "_zip_tokens_cpu(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "_zip_tokens_cuda(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "_zip_tokens_triton(Tensor hidden, Tensor attn, int k_dom, int k_ctx, Tensor? keys=None, "
      "bool has_cls=True) -> (Tensor, Tensor)");
  m.def(
      "attention_importance(Tensor q, Tensor k, bool has_cls=True, float? scale=None, *, "
      "Tensor? lse=None) -> Tensor");
  m.def(
      "_attention_importance_cuda(Tensor q, Tensor k, bool has_cls, float scale, *, "
      "Tensor? lse=None) -> Tensor");
  m.def(
      "_attention_importance_triton(Tensor q, Tensor k, bool has_cls, float scale, *, "
      "Tensor? lse=None) -> Tensor");
}

// An importable module, so that `import visionzip_kernels._C` loads the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
