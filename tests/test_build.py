"""What the build holds: hsc.info(), `python -m hsc info`, and the tables hsc.ops reads from _C."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import hsc
from hsc import ops

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


def test_mode_table_and_tile_come_from_the_build():
    """The mode table (csrc/block_rules.h: kModes) and the factor's tile (factor_layout.h: kTile)
    reach hsc.ops through _C, and every name in the table is one the ops accept."""
    rows = hsc._C.modes
    assert len(rows) >= 1 and all(isinstance(name, str) and isinstance(spectral, bool)
                                  and isinstance(nonnegative, bool)
                                  for name, spectral, nonnegative in rows)
    assert ops.MODES == tuple(name for name, _, _ in rows)
    assert len(set(ops.MODES)) == len(ops.MODES)
    assert ops.EIGH_MODES == tuple(name for name, spectral, _ in rows if spectral)
    assert ops.NONNEGATIVE_MODES == tuple(name for name, _, nonnegative in rows if nonnegative)
    assert set(ops.NONNEGATIVE_MODES) <= set(ops.EIGH_MODES)  # f >= 0 is a spectral mode's

    torch.manual_seed(0)
    H = torch.randn(20, 4, 4, dtype=torch.float64)
    for name in ops.MODES:
        c = ops.correct(H, mode=name)
        assert c.factor.shape == ops.factor_shape(20, 4) and c.status.shape == (20,)
    with pytest.raises(ValueError, match="mode must be one of") as raised:
        ops.correct(H, mode="no_such_mode")
    message = str(raised.value)
    assert "'no_such_mode'" in message
    assert all(f"'{name}'" in message for name in ops.MODES)

    # correct_from_eigh_ takes the spectral modes, power 0.5 only where f >= 0.
    eigen = ops.eigh(H)
    for name in ops.MODES:
        if name not in ops.EIGH_MODES:
            with pytest.raises(ValueError, match="takes a spectral mode") as raised:
                ops.correct_from_eigh(eigen, mode=name)
            assert all(f"'{m}'" in str(raised.value) for m in ops.EIGH_MODES)
            continue
        ops.correct_from_eigh(eigen, mode=name)
        if name in ops.NONNEGATIVE_MODES:
            ops.correct_from_eigh(eigen, mode=name, power=0.5)
        else:
            with pytest.raises(ValueError, match="power must be") as raised:
                ops.correct_from_eigh(eigen, mode=name, power=0.5)
            assert all(f"'{m}'" in str(raised.value) for m in ops.NONNEGATIVE_MODES)

    assert hsc._C.factor_tile == ops.TILE
    assert ops.correct(torch.randn(20, 4, 4)).factor.shape[-1] == ops.TILE
