"""The README's Python examples run as written (each block on its own) and do what they say."""
import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_tour():
    assert len(BLOCKS) == 3, "the tour: ops, a preconditioner in a loop, the optimizers"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    torch.manual_seed(0)
    namespace = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    if index == 1:  # the preconditioner refreshed twice and summarised a spectrum
        assert namespace["pre"].stats()["refreshes"] == 2
        assert namespace["pre"].stats()["spectrum"]["eigenvalues"] > 0
    if index == 2:  # finite parameters after all three optimizers; the game counted its CG work
        assert all(torch.isfinite(p).all() for p in namespace["model"].parameters())
        assert namespace["game"].stats()["steps"] == 20
        assert namespace["game"].stats()["cg_iterations"] > 0
    assert capsys.readouterr().out.strip(), "every block prints its result"
