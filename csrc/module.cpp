// fastrl._C: an importable module whose loading registers the kernels
// (TORCH_LIBRARY_IMPL); op schemas are defined in Python (fastrl/ops).
// It records what it was built against so `fastrl info` can spot a stale build.
#include <Python.h>

#ifndef FASTRL_TORCH_VERSION
#define FASTRL_TORCH_VERSION "unknown"
#endif
#ifndef FASTRL_CUDA_VERSION
#define FASTRL_CUDA_VERSION ""
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastrl kernels", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef FASTRL_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  if (PyModule_AddStringConstant(module, "built_with_torch", FASTRL_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "built_with_cuda", FASTRL_CUDA_VERSION) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
