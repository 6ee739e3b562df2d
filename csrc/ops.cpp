// The visionzip operator library: every schema, defined once.
//
// `zip_tokens` and `attention_importance` are the public ops; their fake, CPU and CUDA kernels are
// registered from Python (visionzip_kernels/ops.py and importance.py), which validate the arguments
// once and then run the chosen backend. The underscored ops are those backends' entry points: they trust
// their inputs and are called only after that validation.
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
      "attention_importance(Tensor q, Tensor k, bool has_cls=True, float? scale=None, *, "
      "Tensor? lse=None) -> Tensor");
}

// An importable module, so that `import visionzip_kernels._C` loads the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
