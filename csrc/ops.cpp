// attn_kernels._C: op schemas, per-device registration and the Python module.
//
// Layout follows pytorch/extension-cpp: one schema per op in TORCH_LIBRARY, one implementation per
// device in TORCH_LIBRARY_IMPL (CPU here, CUDA in cuda/cuda_ops.cpp when built WITH_CUDA; the residual
// ops have no CUDA implementation, so the dispatcher refuses CUDA tensors for them). The ops
// live in their own namespace, attn_kernels_ext, so they never clash with the Python-defined Triton
// ops in attn_kernels::. Fake (meta) kernels and autograd are registered from Python
// (attn_kernels/ops/ext.py) with torch.library.register_fake / register_autograd.
#include <Python.h>
#include <torch/library.h>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>  // TORCH_VERSION_MAJOR / MINOR, for build_info()
#endif

#include "cpu/gate_driver.h"
#include "glue.h"
#include "ops.h"
#ifdef WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace attn_kernels {

void check_se(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
              int64_t act, int64_t gate) {
  check_x(x, "se");
  TORCH_CHECK_VALUE((act >= kRelu && act <= kGelu) || act == kHardswish, "se: unknown act code ", act,
                    " (0 relu, 1 silu, 2 gelu, 4 hardswish)");
  TORCH_CHECK_VALUE(gate == kSigmoid || gate == kHardSigmoid, "se: unknown gate code ", gate,
                    " (0 sigmoid, 1 hardsigmoid)");
  const int64_t c = x.size(1);
  const bool has_w1 = w1 && w1->defined();
  TORCH_CHECK_VALUE(w2.defined(), "se: w2 (the expand FC weight, shape (C, R)) is required");
  if (!has_w1) {
    TORCH_CHECK_VALUE(!(b1 && b1->defined()), "se: b1 given without w1: effective SE (w1=None) has a single FC");
    check_param(w2, "w2", {c, c}, x, "se");
  } else {
    TORCH_CHECK_VALUE(w1->dim() == 2 && w1->size(0) >= 1, "se: w1 must be a 2-D (R, C) tensor with R >= 1, got shape ",
                      w1->sizes());
    const int64_t r = w1->size(0);
    check_param(*w1, "w1", {r, c}, x, "se");
    if (b1 && b1->defined()) check_param(*b1, "b1", {r}, x, "se");
    check_param(w2, "w2", {c, r}, x, "se");
  }
  if (b2 && b2->defined()) check_param(*b2, "b2", {c}, x, "se");
}

Tensor check_eca(const Tensor& x, const Tensor& weight) {
  check_x(x, "eca");
  Tensor taps = (weight.dim() == 3 && weight.size(0) == 1 && weight.size(1) == 1) ? weight.reshape({-1}) : weight;
  TORCH_CHECK_VALUE(taps.dim() == 1, "eca: weight must have shape (k,) or (1, 1, k), got ", weight.sizes());
  TORCH_CHECK_TYPE(taps.is_floating_point(), "eca: weight must be floating point, got ", taps.scalar_type());
  TORCH_CHECK_VALUE(taps.size(0) >= 1 && taps.size(0) % 2 == 1,
                    "eca: kernel size must be odd and positive (the conv is centred), got k=", taps.size(0));
  TORCH_CHECK_VALUE(taps.device() == x.device(), "eca: weight is on ", taps.device(), " but x is on ", x.device());
  return taps;
}

void check_residual(const Tensor& x, const Tensor& shortcut, int64_t out_act, const char* op) {
  TORCH_CHECK_VALUE(out_act >= kRelu && out_act <= kIdentity, op, ": unknown out_act code ", out_act,
                    " (0 relu, 1 silu, 2 gelu, 3 identity)");
  TORCH_CHECK_VALUE(shortcut.defined(), op, ": shortcut is undefined");
  TORCH_CHECK_VALUE(shortcut.sizes() == x.sizes(), op, ": shortcut has shape ", shortcut.sizes(), ", expected ",
                    x.sizes(), " (same as x)");
  TORCH_CHECK_TYPE(shortcut.scalar_type() == x.scalar_type(), op, ": shortcut dtype ", shortcut.scalar_type(),
                   " != x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(shortcut.device() == x.device(), op, ": shortcut is on ", shortcut.device(), " but x is on ",
                    x.device());
}

// The backward ops' inputs besides x: grad_y like x, pooled and s (N, C) floating point, all on x's device.
void check_bwd_inputs(const Tensor& grad_y, const Tensor& x, const Tensor& pooled, const Tensor& s, const char* op) {
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), op, ": grad_y has shape ", grad_y.sizes(), ", expected ", x.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y dtype ", grad_y.scalar_type(),
                   " != x dtype ", x.scalar_type());
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_y, "grad_y"}, {pooled, "pooled"}, {s, "s"}}) {
    TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  }
  const at::IntArrayRef nc = x.sizes().slice(0, 2);
  TORCH_CHECK_VALUE(pooled.sizes() == nc && s.sizes() == nc, op, ": pooled / s have shapes ", pooled.sizes(), " / ",
                    s.sizes(), ", expected (N, C) = ", nc);
  TORCH_CHECK_TYPE(pooled.is_floating_point() && s.is_floating_point(), op, ": pooled / s must be floating point");
}

}  // namespace attn_kernels

TORCH_LIBRARY(attn_kernels_ext, m) {
  m.def("se_fwd(Tensor x, Tensor? w1, Tensor? b1, Tensor w2, Tensor? b2, int act, int gate) -> (Tensor, Tensor, Tensor)");
  m.def("se_bwd(Tensor grad_y, Tensor x, Tensor? w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor pooled, Tensor s, "
        "int act, int gate) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("eca_fwd(Tensor x, Tensor weight, bool circular) -> (Tensor, Tensor, Tensor)");
  m.def("eca_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor pooled, Tensor s, bool circular) -> (Tensor, Tensor)");
  m.def("se_residual_fwd(Tensor x, Tensor shortcut, Tensor? w1, Tensor? b1, Tensor w2, Tensor? b2, int act, int gate, "
        "int out_act) -> (Tensor, Tensor, Tensor)");
  m.def("se_residual_bwd(Tensor grad_y, Tensor x, Tensor shortcut, Tensor? w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "Tensor pooled, Tensor s, int act, int gate, int out_act) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("eca_residual_fwd(Tensor x, Tensor shortcut, Tensor weight, bool circular, int out_act) -> (Tensor, Tensor, Tensor)");
  m.def("eca_residual_bwd(Tensor grad_y, Tensor x, Tensor shortcut, Tensor weight, Tensor pooled, Tensor s, "
        "bool circular, int out_act) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attn_kernels_ext, CPU, m) {
  m.impl("se_fwd", &attn_kernels::se_fwd_cpu);
  m.impl("se_bwd", &attn_kernels::se_bwd_cpu);
  m.impl("eca_fwd", &attn_kernels::eca_fwd_cpu);
  m.impl("eca_bwd", &attn_kernels::eca_bwd_cpu);
  m.impl("se_residual_fwd", &attn_kernels::se_residual_fwd_cpu);
  m.impl("se_residual_bwd", &attn_kernels::se_residual_bwd_cpu);
  m.impl("eca_residual_fwd", &attn_kernels::eca_residual_fwd_cpu);
  m.impl("eca_residual_bwd", &attn_kernels::eca_residual_bwd_cpu);
}

// ---- the Python module: importing attn_kernels._C loads the library and registers the ops --------
extern "C" {

static PyObject* attn_has_cuda(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

static PyObject* attn_has_openmp(PyObject*, PyObject*) {
#ifdef _OPENMP  // ATen's at::parallel_for is parallel only in code compiled with OpenMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// CPU output stores: -1 auto (non-temporal for outputs above a quarter of the L3), 0 plain, 1 non-temporal.
static PyObject* attn_set_cpu_stream(PyObject*, PyObject* arg) {
  const long mode = PyLong_AsLong(arg);
  if (mode == -1 && PyErr_Occurred()) return nullptr;
  if (mode < -1 || mode > 1) {
    PyErr_SetString(PyExc_ValueError, "set_cpu_stream: mode must be -1 (auto), 0 (plain stores) or 1 (non-temporal)");
    return nullptr;
  }
  const int old = attn_kernels::cpu::stream_mode().exchange(static_cast<int>(mode));
  return PyLong_FromLong(old);
}

// The ISA of this build, also as a marker string in the binary: ops/ext.py reads it from the .so file
// before loading it, so a binary built for AVX512 elsewhere is refused on a CPU without it (ImportError,
// the backend reported unavailable) instead of dying on an illegal instruction.
#if defined(CPU_CAPABILITY_AVX512)
#define ATTN_KERNELS_CPU_ISA "avx512"
#elif defined(CPU_CAPABILITY_AVX2)
#define ATTN_KERNELS_CPU_ISA "avx2"
#else
#define ATTN_KERNELS_CPU_ISA "default"
#endif
#if defined(__GNUC__)
__attribute__((used))
#endif
const char attn_kernels_isa_marker[] = "attn_kernels_cpu_isa=" ATTN_KERNELS_CPU_ISA ";";

static PyObject* attn_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(ATTN_KERNELS_CPU_ISA); }

// The compiler and runtimes this binary was built with, for bug reports (attn_kernels.info(), `attn-kernels info`):
// a build with another compiler than torch's was the first suspect of a crash seen only on one machine.
#define ATTN_KERNELS_STR2(x) #x
#define ATTN_KERNELS_STR(x) ATTN_KERNELS_STR2(x)
static PyObject* attn_build_info(PyObject*, PyObject*) {
  const char* info =
#if defined(__clang__)
      "clang " __clang_version__
#elif defined(__GNUC__)
      "gcc " __VERSION__
#else
      "unknown compiler"
#endif
#if defined(_GLIBCXX_RELEASE)
      ", libstdc++ " ATTN_KERNELS_STR(_GLIBCXX_RELEASE) " (" ATTN_KERNELS_STR(__GLIBCXX__) ")"
#endif
#if defined(_GLIBCXX_USE_CXX11_ABI)
      ", cxx11_abi=" ATTN_KERNELS_STR(_GLIBCXX_USE_CXX11_ABI)
#endif
#if defined(_OPENMP)
      ", _OPENMP=" ATTN_KERNELS_STR(_OPENMP)
#endif
#if defined(TORCH_VERSION_MAJOR)
      ", torch headers " ATTN_KERNELS_STR(TORCH_VERSION_MAJOR) "." ATTN_KERNELS_STR(TORCH_VERSION_MINOR)
#endif
      ;
  return PyUnicode_FromString(info);
}

static PyObject* attn_can_stream(PyObject*, PyObject*) {
  return PyBool_FromLong(ATTN_KERNELS_STREAM_STORES);
}

// CUDA forward schedule control, for tests and benchmarks on a GPU (no-ops without CUDA).
static PyObject* attn_set_cuda_cluster(PyObject*, PyObject* arg) {
#ifdef WITH_CUDA
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;  // the truth test raised: pass its exception on
  ak_set_cluster_enabled(on);
#else
  (void)arg;
#endif
  Py_RETURN_NONE;
}

// The CUDA kernels' row loops (common.cuh g_row_loops), for tests and A/B benchmarks; returns the previous
// setting (-1 without CUDA kernels, where it is a no-op).
static PyObject* attn_set_cuda_row_loops(PyObject*, PyObject* arg) {
#ifdef WITH_CUDA
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;  // the truth test raised: pass its exception on
  const int previous = ak_row_loops();
  ak_set_row_loops(on);
  return PyLong_FromLong(previous);
#else
  (void)arg;
  return PyLong_FromLong(-1);
#endif
}

static PyObject* attn_last_cuda_path(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  return PyLong_FromLong(ak_last_forward_path());
#else
  return PyLong_FromLong(-1);
#endif
}

static PyObject* attn_last_cpu_schedule(PyObject*, PyObject*) {
  return PyLong_FromLong(attn_kernels::cpu::last_schedule().load(std::memory_order_relaxed));
}

static PyMethodDef attn_methods[] = {
    {"has_cuda", attn_has_cuda, METH_NOARGS, "True when the extension was built with its CUDA kernels."},
    {"has_openmp", attn_has_openmp, METH_NOARGS,
     "True when the CPU kernels were compiled with OpenMP (else at::parallel_for runs on one thread)."},
    {"set_cpu_stream", attn_set_cpu_stream, METH_O,
     "CPU output stores: -1 auto (non-temporal for outputs above a quarter of the L3), 0 plain, 1 non-temporal. "
     "Returns the previous mode."},
    {"cpu_isa", attn_cpu_isa, METH_NOARGS, "Vector ISA the CPU kernels were built for: avx512, avx2 or default."},
    {"build_info", attn_build_info, METH_NOARGS,
     "Compiler, libstdc++, OpenMP and torch-header versions this binary was built with."},
    {"can_stream", attn_can_stream, METH_NOARGS,
     "True when the CPU kernels were built with non-temporal stores (AVX2 / AVX512 builds)."},
    {"set_cuda_cluster", attn_set_cuda_cluster, METH_O,
     "Enable (True, default) or disable the sm_90 thread-block-cluster forward schedule."},
    {"set_cuda_row_loops", attn_set_cuda_row_loops, METH_O,
     "Enable or disable (default; ATTN_KERNELS_CUDA_ROW_LOOPS=1 at load enables) the CUDA kernels' row loops "
     "and cp.async slice copies; returns the previous setting (-1: built without CUDA)."},
    {"last_cpu_schedule", attn_last_cpu_schedule, METH_NOARGS,
     "Schedule of the last CPU SE / ECA forward or backward: 1 one sample per task, 0 phased (-1: none yet)."},
    {"last_cuda_path", attn_last_cuda_path, METH_NOARGS,
     "Schedule of the last CUDA forward: 0 portable, 1 Hopper cluster (-1: built without CUDA)."},
    {nullptr, nullptr, 0, nullptr},
};

static struct PyModuleDef attn_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "attn_kernels C++/CUDA extension: registers torch.ops.attn_kernels_ext.{se,eca}[_residual]_{fwd,bwd}.", -1, attn_methods,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&attn_module); }
}
