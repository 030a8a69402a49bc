"""What the build holds: hsc.info() and `python -m hsc info`."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

import hsc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = "/usr/local/cuda/bin/nvcc"


def field(text: str, name: str) -> str:
    """The value of the line `name: value` of hsc.info()'s text."""
    values = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith(name + ": ")]
    assert len(values) == 1, f"no single line {name!r} in:\n{text}"
    return values[0]


def test_info_lists_backends_and_cuda_build(capsys):
    text = hsc.info()
    assert capsys.readouterr().out.strip() == text.strip()  # printed, and returned
    assert text.splitlines()[:2] == [f"hsc {hsc.__version__}", f"torch {torch.__version__}"]
    backends = field(text, "backends with kernels").split(", ")
    assert "CPU" in backends
    cuda = field(text, "CUDA")
    if hsc._C.cuda_compiled:
        assert cuda.startswith(f"compiled (CUDA {hsc._C.cuda_version})") and "CUDA" in backends
    else:
        assert cuda.startswith("not compiled") and "CUDA" not in backends
    assert cuda.endswith(f"GPU present: {torch.cuda.is_available()}")
    # setup.py compiles the CUDA part whenever torch is a CUDA build and nvcc is found, unless
    # HSC_CUDA=0: on such a machine a build without it is a broken build.
    toolkit = torch.version.cuda is not None and os.path.exists(NVCC)
    if toolkit and os.environ.get("HSC_CUDA") != "0":
        assert hsc._C.cuda_compiled


def test_command_line_info_runs():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "hsc", "info"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "CPU" in field(result.stdout, "backends with kernels").split(", ")
    assert result.stdout.startswith(f"hsc {hsc.__version__}\n")
