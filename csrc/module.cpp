// fastrl._C: an importable module whose loading registers the kernels
// (TORCH_LIBRARY_IMPL); op schemas are defined in Python (fastrl/ops).
// It records what it was built against so `fastrl info` can spot a stale build,
// and hosts what touches Python objects rather than tensors.
#include <Python.h>

#include <cstdint>
#include <cstring>

#ifndef FASTRL_TORCH_VERSION
#define FASTRL_TORCH_VERSION "unknown"
#endif
#ifndef FASTRL_CUDA_VERSION
#define FASTRL_CUDA_VERSION ""
#endif

// Group ids in first-seen order for any hashable ids (verl's string uids), as
// the bytes of an int64 array. Equal ids are found through a dict, as Python
// would; a run of the same object (verl repeats each uid n times) skips the lookup.
static PyObject* group_ids_from_uids(PyObject*, PyObject* uids) {
  PyObject* seq = PySequence_Fast(uids, "uids must be a sequence");
  if (seq == nullptr) return nullptr;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  PyObject* out = PyBytes_FromStringAndSize(nullptr, n * static_cast<Py_ssize_t>(sizeof(int64_t)));
  PyObject* seen = PyDict_New();
  if (out == nullptr || seen == nullptr) goto fail;
  {
    char* ids = PyBytes_AS_STRING(out);
    int64_t next = 0, id = -1;
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (i == 0 || items[i] != items[i - 1]) {
        PyObject* found = PyDict_GetItemWithError(seen, items[i]);  // borrowed
        if (found != nullptr) {
          id = PyLong_AsLongLong(found);
        } else {
          if (PyErr_Occurred()) goto fail;  // an unhashable id
          PyObject* value = PyLong_FromLongLong(next);
          if (value == nullptr || PyDict_SetItem(seen, items[i], value) < 0) {
            Py_XDECREF(value);
            goto fail;
          }
          Py_DECREF(value);
          id = next++;
        }
      }
      std::memcpy(ids + i * sizeof(int64_t), &id, sizeof(int64_t));
    }
  }
  Py_DECREF(seen);
  Py_DECREF(seq);
  return out;
fail:
  Py_XDECREF(out);
  Py_XDECREF(seen);
  Py_DECREF(seq);
  return nullptr;
}

static PyMethodDef methods[] = {
    {"group_ids_from_uids", group_ids_from_uids, METH_O,
     "Group ids in first-seen order (bytes of int64) for a sequence of hashable ids."},
    {nullptr, nullptr, 0, nullptr}};

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastrl kernels", -1, methods};
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
