"""hsc.config (docs/contract.md §5 "Options"): PreconditionerConfig.validate, the generated --hsc-* flags
(add_arguments / from_arguments) and their use in the ``hsc gan`` and ``hsc style`` command lines, and
``python -m hsc``'s message when an application's extra is missing.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import pathlib
import re
import sys

import pytest

from hsc import PreconditionerConfig, ops
from hsc.__main__ import main as hsc_main
from hsc.config import CONFIG_FIELDS, add_arguments, from_arguments

FIELDS = {f.name: f for f in dataclasses.fields(PreconditionerConfig)}


def flag(name: str, prefix: str = "hsc") -> str:
    return f"--{prefix}-{name.replace('_', '-')}"


def squeeze(text: str) -> str:
    """Without whitespace: argparse re-wraps help text (also at hyphens)."""
    return "".join(text.split())


# ---- validate -----------------------------------------------------------------------------------

def documented_options() -> dict:
    """field -> default from the options table of docs/contract.md §5 ("| `field` | default | meaning |")."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "contract.md").read_text()
    section = text[text.index("### Options"):text.index("### Refresh schedule")]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.M)
    return {name: ast.literal_eval(default.strip().strip("`")) for name, default in rows}


def test_defaults_are_the_documented_ones_and_valid():
    documented = documented_options()
    assert len(documented) >= 15  # the table was found
    assert dataclasses.asdict(PreconditionerConfig().validate()) == documented


BAD_VALUES = [
    ("block_size", 0), ("block_size", 2.5), ("block_size", True), ("estimator", "coloring"), ("samples", 0),
    ("colour_radius", -1), ("colour_radius", 1.0), ("ema", 1.0), ("ema", -0.1), ("update_every", 0),
    ("damping", -1e-3), ("damping", float("inf")), ("damping", float("nan")), ("scale", 0.0),
    ("scale", float("inf")), ("scale", float("nan")), ("scale_rule", "median"), ("mode", "lu"),
    ("max_tries", 0), ("max_sweeps", 0), ("max_sweeps", 1001), ("chunk_size", 0),
]


@pytest.mark.parametrize("name,value", BAD_VALUES, ids=lambda v: str(v))
def test_validate_names_the_field(name, value):
    config = dataclasses.replace(PreconditionerConfig(mode="saddle_free"), **{name: value})
    with pytest.raises(ValueError, match=f"hsc: {name} must"):
        config.validate()


def test_validate_refuses_the_relative_scale_outside_the_spectral_modes():
    for mode in ops.MODES:
        config = PreconditionerConfig(mode=mode, scale_rule="relative")
        if mode in ops.EIGH_MODES:
            assert config.validate() is config
        else:
            with pytest.raises(ValueError, match="hsc: scale_rule must be 'absolute' in mode"):
                config.validate()


# ---- add_arguments / from_arguments -------------------------------------------------------------

# Not the library's defaults, so that the flags' defaults are seen to come from the object given.
APP_DEFAULTS = dataclasses.replace(PreconditionerConfig(), block_size=5, estimator="coloured", patch=(2, 3),
                                   mode="saddle_free_root", scale_rule="relative", chunk_size=7, scale=0.25)


def parser_with(defaults=APP_DEFAULTS, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app")
    add_arguments(parser, defaults, **kwargs)
    return parser


def test_from_arguments_round_trips_the_defaults():
    args = parser_with().parse_args([])
    assert from_arguments(args, APP_DEFAULTS) == APP_DEFAULTS
    assert from_arguments(parser_with(PreconditionerConfig()).parse_args([]), PreconditionerConfig()) == \
        PreconditionerConfig()


def test_flags_parse_every_field():
    args = parser_with().parse_args([
        "--hsc-block-size", "8", "--hsc-estimator", "probe", "--hsc-samples", "3", "--hsc-colour-radius", "2",
        "--hsc-ema", "0.5", "--hsc-update-every", "4", "--hsc-damping", "1e-3", "--hsc-scale", "2",
        "--hsc-scale-rule", "absolute", "--hsc-mode", "cholesky", "--hsc-max-tries", "5", "--hsc-max-sweeps", "12",
        "--hsc-chunk-size", "none", "--hsc-patch", "2,2", "--hsc-seed", "9"])
    assert from_arguments(args, APP_DEFAULTS) == PreconditionerConfig(
        block_size=8, estimator="probe", samples=3, colour_radius=2, ema=0.5, update_every=4, damping=1e-3,
        scale=2.0, scale_rule="absolute", mode="cholesky", max_tries=5, max_sweeps=12, chunk_size=None,
        patch=(2, 2), seed=9)
    for text, patch in (("none", None), ("NONE", None), ("1,4", (1, 4))):
        assert from_arguments(parser_with().parse_args(["--hsc-patch", text]), APP_DEFAULTS).patch == patch
    assert from_arguments(parser_with().parse_args(["--hsc-chunk-size", "16"]), APP_DEFAULTS).chunk_size == 16


@pytest.mark.parametrize("argv,message", [
    (["--hsc-patch", "2"], "expected two ints ph,pw or none"), (["--hsc-patch", "a,b"], "expected two ints"),
    (["--hsc-mode", "lu"], "invalid choice"), (["--hsc-scale-rule", "median"], "invalid choice"),
    (["--hsc-estimator", "coloring"], "invalid choice"), (["--hsc-chunk-size", "many"], "invalid"),
])
def test_bad_flag_values_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parser_with().parse_args(argv)
    assert message in capsys.readouterr().err


def test_skip_notes_and_prefix():
    parser = parser_with(skip=("seed", "patch"), notes={"scale": "given per pixel"}, prefix="pre")
    text = squeeze(parser.format_help())
    assert squeeze(flag("block_size", "pre")) in text and "--hsc-" not in text
    assert squeeze(flag("seed", "pre")) not in text and squeeze(flag("patch", "pre")) not in text
    assert squeeze(FIELDS["scale"].metadata["help"] + "; given per pixel (default: 0.25)") in text
    args = parser.parse_args(["--pre-samples", "4"])
    # a skipped field keeps the defaults' value
    assert from_arguments(args, APP_DEFAULTS, prefix="pre") == dataclasses.replace(APP_DEFAULTS, samples=4)


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        hsc_main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def has_flag(text: str, name: str) -> bool:
    return re.search(re.escape(flag(name)) + r"(?![\w-])", text) is not None


@pytest.mark.parametrize("command,skipped", [
    # gan: the seed comes from --seeds (one per run and player); its networks have no image-like
    # tensors
    ("gan", {"seed", "patch"}),
    # style: b is 3 ph pw (from --hsc-patch); the seed is --seed; factor_power is the coupled
    # solve's (hsc.game), not a step's
    ("style", {"block_size", "seed", "factor_power"}),
])
def test_application_help_lists_every_field_with_its_help(command, skipped, capsys):
    raw = help_of(command, capsys)
    text = squeeze(raw)
    if command == "gan":
        defaults = PreconditionerConfig()  # the GAN takes the library's
    else:
        from hsc.style.run import STYLE_PRECONDITIONER as defaults
    for name in CONFIG_FIELDS:
        assert has_flag(raw, name) == (name not in skipped), name
        if name in skipped:
            continue
        assert squeeze(FIELDS[name].metadata["help"]) in text, name
        value = getattr(defaults, name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert squeeze(f"(default: {shown})") in text, name
    if command == "style":  # the application's own reading of two fields
        assert squeeze("; an absolute mu is given per pixel, mu x H W") in text and squeeze("; the blocks: b = 3 ph pw") in text


# ---- python -m hsc: a missing extra ----------------------------------------------------------------

@pytest.mark.parametrize("command", ["gan", "style"])
def test_missing_extra_at_import_names_the_extra_and_the_package(command, monkeypatch):
    real = importlib.import_module

    def without_package(name, *args, **kwargs):
        if name == f"hsc.{command}.cli":
            raise ModuleNotFoundError("No module named 'cgds'", name="cgds")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_package)
    with pytest.raises(SystemExit) as exit_info:
        hsc_main([command, "--help"])
    assert str(exit_info.value) == (f"hsc {command} needs the [{command}] extra: pip install 'hsc[{command}]' "
                                    f"(missing: cgds)")


def test_missing_extra_at_run_time_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    with pytest.raises(SystemExit, match=r"\[gan\].*tqdm"):
        hsc_main(["gan", "--optim", "adam", "--steps", "1", "--seeds", "0", "--batch-size", "8",
                  "--out", str(tmp_path)])


# ---- every option of the applications' configs has a flag ------------------------------------------

def _options(config, skipped, path=""):
    """(flag, field) of every option of ``config`` and of the configs nested in it."""
    from hsc.config import _flag, _flag_name, _nested_prefix

    def walk(cfg, prefix, switch):
        for f in dataclasses.fields(cfg):
            if f.name in skipped or "help" not in f.metadata:
                continue
            if f.metadata.get("nested"):
                yield from walk(getattr(cfg, f.name) or f.default_factory(), _nested_prefix(prefix, f),
                                f.metadata["switch"])
            else:
                yield _flag(prefix, "" if f.name == switch else _flag_name(f)), f
    return list(walk(config, path, None))


@pytest.mark.parametrize("command", ["gan", "style"])
def test_every_run_setting_game_option_and_step_control_field_has_a_flag(command, capsys):
    """The GAN's TrainConfig (its hsc settings, GameConfig and both preconditioners) and the style
    RunConfig (hsc's settings, StepControl, hsc-lbfgs's): every field a run reads has a flag with
    its help, and giving the flag changes the config the CLI builds."""
    if command == "gan":
        from hsc.gan.cli import SKIPPED, build_configs
        from hsc.gan.train import TrainConfig as Run
    else:
        from hsc.style.cli import SKIPPED, build_configs
        from hsc.style.run import RunConfig as Run
    text = squeeze(help_of(command, capsys))
    options = _options(Run(), set(SKIPPED))
    names = {f.name for _, f in options}
    if command == "gan":
        assert {"beta", "eps", "warm_start", "solve_side", "cg_tol", "betas", "acgd_lr", "graft"} <= names
    else:
        assert {"shrink", "armijo", "max_backtracks", "keep_pairs", "history", "adam_lr"} <= names
    for flag_text, f in options:
        assert squeeze(flag_text) in text and squeeze(f.metadata["help"]) in text, flag_text
    parser = argparse.ArgumentParser()
    importlib.import_module(f"hsc.{command}.cli").add_arguments(parser)
    changes = ["--game-beta", "0.5", "--game-warm-start", "off", "--game-solve-side", "x"] if command == "gan" \
        else ["--hsc-step-control", "armijo", "--hsc-step-control-shrink", "0.25", "--hsc-lbfgs-keep-pairs", "off"]
    built = build_configs(parser.parse_args(["--steps", "1", *changes]))[0]
    if command == "gan":
        assert (built.game.beta, built.game.warm_start, built.game.solve_side) == (0.5, False, "x")
    else:
        assert (built.hsc.step_control.rule, built.hsc.step_control.shrink, built.hsc_lbfgs.keep_pairs) == \
            ("armijo", 0.25, False)
        off = build_configs(parser.parse_args(["--steps", "1", "--hsc-step-control", "none"]))[0]
        assert off.hsc.step_control is None
