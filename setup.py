"""Build script. The Python package needs no compiler; the C++/CUDA extension in csrc/ is optional.

``attn_kernels._C`` (csrc/) is built:
  * the CPU part wherever torch is importable at build time and a C++ compiler works
    (build with ``pip install --no-build-isolation .`` so setup.py sees the installed torch);
  * plus the CUDA part when torch has CUDA and nvcc is found (CUDA_HOME), or when
    ``TORCH_CUDA_ARCH_LIST`` / ``FORCE_CUDA=1`` asks for a (cross-)compile. With no GPU visible and no
    ``TORCH_CUDA_ARCH_LIST``, it targets sm_80 and sm_90a. ``ATTN_KERNELS_NO_CUDA=1`` builds CPU only.
  * ``ATTN_KERNELS_SKIP_EXT=1`` skips the extension. ``MAX_JOBS`` bounds ninja's parallel compiles.
  * OpenMP (``-fopenmp``) when the compiler takes it: ATen's ``at::parallel_for`` only runs in parallel
    in code compiled with OpenMP (without it every CPU kernel is single-threaded); the extension then
    shares torch's libgomp with GCC (same SONAME; clang's -fopenmp would bring libomp, a second runtime) and its thread count (``torch.set_num_threads``).
  * ``ATTN_KERNELS_CPU_ISA=auto|avx512|avx2|default``: auto builds the CPU kernels for the ISA torch uses
    on the build machine (AVX512 or AVX2), else the portable baseline (attn_kernels/_isa.py);
    ``ATTN_KERNELS_NATIVE=1`` adds ``-march=native``.
A failing compile never fails the install: the error is printed with a warning and the pure-Python
package (reference + Triton backends) is installed; ``attn_kernels.info()`` then says why ``cpu`` /
``cuda`` are unavailable.
"""
import glob
import os
import sys

from setuptools import setup

CSRC = "csrc"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _warn(msg: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (attn_kernels): {msg}\n{bar}\n", file=sys.stderr, flush=True)


def _find_cuda_home(cpp_extension):
    """A CUDA toolkit root with bin/nvcc and include/cuda_runtime_api.h, or None.

    torch guesses CUDA_HOME from `which nvcc`; a wrapper script such as /usr/local/bin/nvcc makes that
    guess /usr/local, which has no CUDA headers, so check the candidates and take the first complete one.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
                  "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")):
            return root
    return None


def _openmp_flags() -> list:
    """["-fopenmp"] when the C++ compiler builds and links an OpenMP program, else [] (with a warning).

    torch's headers make ``at::parallel_for`` parallel only under ``_OPENMP`` (ATen/ParallelOpenMP.h),
    so an extension compiled without -fopenmp runs every CPU kernel on one thread.
    """
    if sys.platform == "win32":
        return ["/openmp"]
    import subprocess
    import tempfile

    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { int n = 0;\n#pragma omp parallel\n{ n = omp_get_num_threads(); }\n"
                    "return n > 0 ? 0 : 1; }\n")
        try:
            ok = subprocess.run([cxx, "-fopenmp", src, "-o", os.path.join(tmp, "omp")], capture_output=True,
                                timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        _warn(f"{cxx} does not build OpenMP programs (-fopenmp): the CPU kernels will run on one thread")
    return ["-fopenmp"] if ok else []


def _cpu_isa_flags() -> list:
    """Vector ISA of the CPU kernels: attn_kernels/_isa.py (shared with the JIT build) decides from
    ATTN_KERNELS_CPU_ISA=auto|avx512|avx2|default; ATTN_KERNELS_NATIVE=1 adds -march=native."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("_attn_kernels_isa", os.path.join(here, "attn_kernels", "_isa.py"))
    isa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(isa)
    try:
        name = isa.choose_isa()
    except ValueError as exc:  # a mistyped ATTN_KERNELS_CPU_ISA must not fail the install
        _warn(f"{exc}; building the portable baseline")
        name = "default"
    print(f"attn_kernels: CPU kernels built for {name}", file=sys.stderr)
    return (["-march=native"] if _flag("ATTN_KERNELS_NATIVE") else []) + isa.isa_flags(name)


def _extensions():
    """(ext_modules, cmdclass) for the optional extension; ([], {}) when it is skipped."""
    if _flag("ATTN_KERNELS_SKIP_EXT"):
        print("attn_kernels: ATTN_KERNELS_SKIP_EXT=1: skipping the C++/CUDA extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # no torch at build time (e.g. an isolated build): Python-only install
        _warn(f"torch is not importable at build time ({exc}); installing without the C++/CUDA extension "
              "(reinstall with `pip install --no-build-isolation .` to build it)")
        return [], {}

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")) + glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
    openmp = _openmp_flags()
    cxx = ["-O3", "-Wno-unknown-pragmas"] + openmp + _cpu_isa_flags()
    link = [] if sys.platform == "win32" else openmp
    macros = []
    with_cuda = False
    if not _flag("ATTN_KERNELS_NO_CUDA"):
        asked = _flag("FORCE_CUDA") or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
        cuda_home = _find_cuda_home(cpp_extension) if torch.version.cuda is not None else None
        with_cuda = cuda_home is not None
        if with_cuda:
            os.environ["CUDA_HOME"] = cuda_home
            cpp_extension.CUDA_HOME = cuda_home  # torch's build reads this module global
        if not with_cuda and asked:
            _warn("FORCE_CUDA / TORCH_CUDA_ARCH_LIST asks for the CUDA kernels, but "
                  + ("torch has no CUDA" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)")
                  + "; building the CPU part only")
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0a"
        macros.append(("WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "attn_kernels._C", sources + cuda_sources, define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]}, extra_link_args=link)
    else:
        ext = cpp_extension.CppExtension("attn_kernels._C", sources, define_macros=macros,
                                         extra_compile_args={"cxx": cxx}, extra_link_args=link)

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExt(base):
        """build_ext that turns a compile failure into a warning: the Python package still installs."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001  (any compiler / toolchain failure)
                _warn(f"building the C++/CUDA extension attn_kernels._C failed ({type(exc).__name__}: {exc}).\n"
                      "Installing the pure-Python package (reference + Triton backends); the 'cpu'/'cuda' "
                      "backends will report this as unavailable. Set ATTN_KERNELS_SKIP_EXT=1 to skip the build.")

        def build_extension(self, ext_):
            try:
                super().build_extension(ext_)
            except Exception as exc:  # noqa: BLE001
                _warn(f"compiling {ext_.name} failed ({type(exc).__name__}: {exc}); continuing without it")

        def copy_extensions_to_source(self):  # editable installs: nothing to copy when the build failed
            try:
                super().copy_extensions_to_source()
            except Exception as exc:  # noqa: BLE001
                _warn(f"attn_kernels._C was not built ({type(exc).__name__}: {exc})")

    print(f"attn_kernels: building attn_kernels._C (CPU{' + CUDA' if with_cuda else ''})", file=sys.stderr)
    return [ext], {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
