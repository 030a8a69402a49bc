"""Build of the hsc extension (hsc._C).

C++ sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled; CUDA sources (csrc/cuda/*.cu) too
when torch is a CUDA build and nvcc is found. Environment:
  HSC_CUDA=0|1        force the CUDA part off / on (default: detected)
  HSC_MARCH=...       -march for the CPU kernels (default: native; e.g. x86-64-v3 for a portable build)
  TORCH_CUDA_ARCH_LIST  GPU architectures (default: "8.0;9.0")
  MAX_JOBS            parallel compile jobs (ninja)
"""
import glob
import os
import shutil

# torch.utils.cpp_extension reads CUDA_HOME when imported: point it at the toolkit first.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    return shutil.which("nvcc")


def want_cuda():
    flag = os.environ.get("HSC_CUDA")
    if flag is not None:
        if flag not in ("0", "1"):
            raise SystemExit(f"HSC_CUDA must be 0 or 1, got {flag!r}")
        if flag == "1" and (torch.version.cuda is None or find_nvcc() is None):
            raise SystemExit("HSC_CUDA=1 needs a CUDA build of torch and nvcc (set CUDA_HOME)")
        return flag == "1"
    return torch.version.cuda is not None and find_nvcc() is not None


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    march = os.environ.get("HSC_MARCH", "native")
    # -ffp-contract=fast: ISO C++ mode would otherwise forbid fused multiply-adds.
    # -fopenmp: at::parallel_for is inline OpenMP code, serial unless the extension is built with it.
    cxx = ["-O3", f"-march={march}", "-fno-math-errno", "-ffp-contract=fast", "-fopenmp"]
    link = ["-fopenmp"]
    if not want_cuda():
        return CppExtension("hsc._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cuda_version = torch.version.cuda
    cxx += ["-DHSC_WITH_CUDA", f'-DHSC_CUDA_VERSION="{cuda_version}"']
    nvcc = ["-O3", "-DHSC_WITH_CUDA", "-lineinfo"]
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return CUDAExtension("hsc._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                         extra_link_args=link)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
