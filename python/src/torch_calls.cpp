// sage_attention._torch_calls: the Python package's CUDA calls made with
// PyTorch's own tensor objects.
//
// Why: a short attention call is host-bound. Through the portable binding
// (_C), the Python layer builds a (pointer, dtype, shape, strides, device)
// tuple per tensor, allocates the output and the workspace through
// torch.empty and asks for the raw stream: ~20 us of Python on the lent
// H200's host before the first kernel starts, against ~40-80 us of GPU
// work at 1K tokens. Here one C call reads the tensors' fields in C++,
// allocates through ATen (the same caching allocator, on the same current
// stream) and launches, through the core that _C carries
// (framework_entries.h): this module links none of its own.
//
// It links against the libtorch it was built with, so the package loads it
// only when the running torch and its CUDA are those versions
// (sage_attention/_ops.py, _torch_build.py); any other torch takes the
// portable path, with the same results and errors.
//
//   forward(q, k, v, options_address, max_head_dim[, plain_only]) -> (out, lse or None), None,
//   or NotImplemented
//
// None: not a call for this path (a host tensor, not 4-D, no query row or
// key, a head dim above max_head_dim, a dtype the core does not take):
// the caller then runs the portable path, which answers or raises for it.
// With plain_only, NotImplemented first where q, k or v is not a plain
// tensor (plain_tensor below): the caller's own checks then decide (the
// dispatcher for most such calls). Those checks in Python were most of the
// package's host time before this call (their Python form 1.8 us of 2.6 on
// the development machine), and here they are a few loads.
// options_address is the `_address` of a sage_attention._C.Options the caller holds until the call returns.
#include <Python.h>

#include <ATen/ops/empty.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/object_ptr.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <cstdint>
#include <exception>
#include <optional>

#include "framework_entries.h"

namespace {

// The core's entry points, from sage_attention._C (set by the module's init).
const FrameworkEntries* core = nullptr;

// `t` as the core's view; false for a layout, dtype or rank the core does not take.
bool view_of(const at::Tensor& t, sage::TensorView* view) {
  // (Sparse and other layouts, nested tensors: the portable path's error.)
  if (t.layout() != at::kStrided || t.is_nested()) return false;
  switch (t.scalar_type()) {
    case at::kFloat: view->dtype = sage::DType::f32; break;
    case at::kHalf: view->dtype = sage::DType::f16; break;
    case at::kBFloat16: view->dtype = sage::DType::bf16; break;
    default: return false;
  }
  if (t.dim() > sage::kMaxRank) return false;
  view->data = t.data_ptr();
  view->rank = static_cast<int>(t.dim());
  for (int i = 0; i < view->rank; ++i) view->shape[i] = t.size(i), view->stride[i] = t.stride(i);
  view->device = t.is_cuda() ? t.get_device() : sage::kHostDevice;
  return true;
}

// Whether the call is this path's: what the portable path checks in Python
// before the core (rank, empty tensors, head dim) holds, and q is on a GPU.
bool takes_call(const at::Tensor& q, const at::Tensor& k, std::int64_t max_head_dim) {
  // (A nested q's sizes may be irregular: nothing is asked of it here.)
  return q.is_cuda() && !q.is_nested() && !k.is_nested() && q.dim() == 4 && q.numel() > 0 && k.numel() > 0 &&
         q.size(3) <= max_head_dim;
}

// [B, Hq, Nq] of q in `layout`: the LSE is head-major whatever q's layout.
std::array<std::int64_t, 3> lse_shape(const at::Tensor& q, sage::TensorLayout layout) {
  if (layout == sage::TensorLayout::HND) return {q.size(0), q.size(1), q.size(2)};
  return {q.size(0), q.size(2), q.size(1)};
}

// Whether `object` is a tensor the `forward` operator would only hand to
// its kernel (sage_attention._ops._plain_tensors, as
// strict or stricter): exactly torch.Tensor (no subclass: fake, DTensor,
// Parameter...), not meta, no functorch or functionalization wrapper and
// no Python dispatch key, and no gradient to record (grad mode on and
// requires_grad). The caller checks the rest (modes, forward AD, tracing).
bool plain_tensor(PyObject* object) {
  if (Py_TYPE(object) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return false;
  const at::Tensor& t = THPVariable_Unpack(object);
  constexpr c10::DispatchKeySet kWrappersAndPython({c10::DispatchKey::FuncTorchBatched,
                                                    c10::DispatchKey::BatchedNestedTensor,
                                                    c10::DispatchKey::FuncTorchGradWrapper,
                                                    c10::DispatchKey::Functionalize, c10::DispatchKey::Python,
                                                    c10::DispatchKey::PythonTLSSnapshot});
  if (t.is_meta() || t.key_set().has_any(kWrappersAndPython)) return false;
  return !(c10::GradMode::is_enabled() && t.requires_grad());
}

// The workspace's storage: an ATen tensor that lives until the call has
// returned (the caching allocator then reuses it in stream order). An
// allocation error is kept and rethrown after the core returns, so that it
// reaches Python as PyTorch's own (torch.OutOfMemoryError).
struct TorchWorkspace {
  at::TensorOptions options;
  std::optional<at::Tensor> storage;
  std::exception_ptr error;
};

void* allocate_workspace(std::size_t bytes, void* context) {
  auto* workspace = static_cast<TorchWorkspace*>(context);
  try {
    workspace->storage = at::empty({static_cast<std::int64_t>(bytes)}, workspace->options);
    return workspace->storage->data_ptr();
  } catch (...) {
    workspace->error = std::current_exception();
    return nullptr;
  }
}

PyObject* forward(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 5 && nargs != 6) {
    PyErr_SetString(PyExc_TypeError,
                    "forward(q, k, v, options_address, max_head_dim[, plain_only]) takes 5 or 6 arguments");
    return nullptr;
  }
  const int plain_only = nargs == 6 ? PyObject_IsTrue(args[5]) : 0;
  if (plain_only < 0) return nullptr;
  if (plain_only) {
    for (int i = 0; i < 3; ++i) {
      if (!plain_tensor(args[i])) Py_RETURN_NOTIMPLEMENTED;
    }
  }
  for (int i = 0; i < 3; ++i) {
    if (!THPVariable_Check(args[i])) Py_RETURN_NONE;
  }
  const auto options = reinterpret_cast<const sage::AttentionOptions*>(PyLong_AsVoidPtr(args[3]));
  const long long max_head_dim = PyLong_AsLongLong(args[4]);
  if (PyErr_Occurred()) return nullptr;
  const at::Tensor& q = THPVariable_Unpack(args[0]);
  const at::Tensor& k = THPVariable_Unpack(args[1]);
  const at::Tensor& v = THPVariable_Unpack(args[2]);
  sage::AttentionArgs call;
  if (!takes_call(q, k, max_head_dim) || !view_of(q, &call.q) || !view_of(k, &call.k) || !view_of(v, &call.v)) {
    Py_RETURN_NONE;
  }
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous, q's dtype and device
  std::optional<at::Tensor> lse;
  if (options->return_lse) {
    lse = at::empty(lse_shape(q, options->layout), q.options().dtype(at::kFloat));
  }
  view_of(out, &call.out);
  if (lse) view_of(*lse, &call.lse);
  TorchWorkspace workspace{q.options().dtype(at::kByte), std::nullopt, nullptr};
  const sage::detail::WorkspaceAllocator allocator{&allocate_workspace, &workspace};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.get_device()).stream();
  sage::Status st;
  Py_BEGIN_ALLOW_THREADS
  st = core->forward(call, *options, allocator, stream);
  Py_END_ALLOW_THREADS
  if (workspace.error) std::rethrow_exception(workspace.error);
  if (!st.is_ok()) {
    core->set_python_error(st);
    return nullptr;
  }
  THPObjectPtr py_out(THPVariable_Wrap(std::move(out)));
  if (!py_out) return nullptr;
  if (!lse) Py_INCREF(Py_None);
  THPObjectPtr py_lse(lse ? THPVariable_Wrap(std::move(*lse)) : Py_None);
  if (!py_lse) return nullptr;
  return PyTuple_Pack(2, py_out.get(), py_lse.get());
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&forward)), METH_FASTCALL,
     "forward(q, k, v, options_address, max_head_dim[, plain_only]) -> (out, lse or None), None where the "
     "call is not this path's, or (plain_only) NotImplemented where a tensor is not plain (see torch_calls.cpp)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_torch_calls",
                          "sage_attention's CUDA calls with PyTorch tensor objects (built against one torch version)",
                          -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

// The entry points come from _C's capsule; an ImportError where that
// module is missing or from another build.
PyMODINIT_FUNC PyInit__torch_calls() {
  THPObjectPtr portable(PyImport_ImportModule("sage_attention._C"));
  THPObjectPtr capsule(portable ? PyObject_GetAttrString(portable.get(), "_framework_entries") : nullptr);
  if (capsule) core = static_cast<const FrameworkEntries*>(PyCapsule_GetPointer(capsule.get(), SAGE_FRAMEWORK_ENTRIES_CAPSULE));
  if (core == nullptr) {
    PyErr_Clear();
    PyErr_SetString(PyExc_ImportError, "sage_attention._torch_calls: sage_attention._C of the same build "
                                       "(capsule " SAGE_FRAMEWORK_ENTRIES_CAPSULE ") is missing");
    return nullptr;
  }
  return PyModule_Create(&module_def);
}
