"""The stage settings are defined once: each `qrm` stage command's options, the YAML blocks
of `qrm train` and the stage functions all come from the dataclasses of `qrm_hf.training.settings`."""

import dataclasses

import pytest

from qrm_hf.cli import build_parser
from qrm_hf.modeling.configuration_qrm import DEFAULT_QUANTILE_LEVELS
from qrm_hf.training import settings as stage_settings
from qrm_hf.training.settings import (
    AssembleSettings,
    DebiasSettings,
    ExtractionSettings,
    GatingSettings,
    HeadsSettings,
    settings_from_args,
    settings_from_mapping,
)

# (command, its positional arguments, its settings class)
COMMANDS = [
    ("extract", ["backbone", "--output-dir", "o", "--preset", "helpsteer"], ExtractionSettings),
    ("fit-quantiles", ["features", "--output-dir", "o"], HeadsSettings),
    ("debias", ["heads", "reference", "--output-dir", "o"], DebiasSettings),
    ("fit-gating", ["heads", "pairs", "--output-dir", "o"], GatingSettings),
    ("assemble", ["backbone", "--heads", "h", "--gating", "g", "--output-dir", "o"], AssembleSettings),
]


@pytest.mark.parametrize(("command", "required", "cls"), COMMANDS)
def test_every_field_is_documented_and_the_command_defaults_are_the_dataclass_defaults(
    command, required, cls
):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    args = build_parser().parse_args([command, *required])
    assert settings_from_args(cls, args) == cls()


def test_options_reach_the_settings_under_their_historic_names():
    args = build_parser().parse_args(
        [
            "fit-quantiles",
            "f",
            "--output-dir",
            "o",
            "--levels",
            "0.25",
            "0.75",
            "--alpha",
            "0.1",
            "0.01",
            "--solver",
            "sklearn",
            "--max-samples-per-attribute",
            "7",
            "--ridge-baseline",
        ]  # fmt: skip
    )
    assert settings_from_args(HeadsSettings, args) == HeadsSettings(
        quantile_levels=[0.25, 0.75], alpha=[0.1, 0.01], solver="sklearn", max_samples_per_attribute=7,
        ridge_baseline=True,
    )  # fmt: skip
    for alpha, expected in (("0.5", 0.5), ("cv", "cv")):
        args = build_parser().parse_args(["fit-quantiles", "f", "--output-dir", "o", "--alpha", alpha])
        assert settings_from_args(HeadsSettings, args).alpha == expected
    args = build_parser().parse_args(
        [
            "fit-gating",
            "h",
            "p",
            "--output-dir",
            "o",
            "--batch-norm",
            "--flip-below",
            "0.3",
            "--temperature",
            "2",
        ]
    )
    assert settings_from_args(GatingSettings, args) == GatingSettings(
        batch_norm=True, flip_below=0.3, temperature=2.0
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "b", "--output-dir", "o", "--batch-size", "0"])


def test_yaml_blocks_are_the_same_dataclasses_and_unknown_keys_are_named():
    assert settings_from_mapping(GatingSettings, {"epochs": 2}, "gating") == GatingSettings(epochs=2)
    assert settings_from_mapping(HeadsSettings, None, "quantile_heads") == HeadsSettings()
    with pytest.raises(ValueError, match=r"gating: unknown key\(s\) \['epoch'\]"):
        settings_from_mapping(GatingSettings, {"epoch": 2}, "gating")


@pytest.mark.parametrize(("command", "required", "cls"), COMMANDS)
def test_a_value_the_option_refuses_is_refused_in_a_yaml_block(command, required, cls, capsys):
    """A `qrm train` YAML block took any value (`batch_size: 0`, `dtype: float64`, `batch_size: eight`) and
    failed later, or not at all; each value the command's option refuses is refused in the YAML too."""
    parser = build_parser()
    refused = 0
    for field in dataclasses.fields(cls):
        options = field.metadata.get("cli")
        options = options if isinstance(options, dict) else {}
        on_off = isinstance(field.default, bool) or options.get("action") == "store_true"  # takes no value
        if field.metadata.get("cli") is False or "nargs" in options or on_off:
            continue
        for value in ("eight", 0, -1, 2.5, "float64"):
            flag = options.get("flag", "--" + field.name.replace("_", "-"))
            try:
                parser.parse_args([command, *required, flag, str(value)])
            except SystemExit:  # the option refuses it
                refused += 1
                with pytest.raises(ValueError, match=f"{command}: {field.name}"):
                    settings_from_mapping(cls, {field.name: value}, command)
    capsys.readouterr()
    assert refused > 0


def test_the_quantile_levels_are_defined_once():
    assert stage_settings.PAPER_LEVELS == DEFAULT_QUANTILE_LEVELS
    assert HeadsSettings().quantile_levels == pytest.approx([0.05 * k for k in range(1, 20)], abs=1e-12)
    assert HeadsSettings().quantile_levels is not DEFAULT_QUANTILE_LEVELS  # a copy per instance


def test_stage_fingerprints_cover_every_setting_that_defines_the_output(tmp_path):
    """`qrm train` skips a stage whose fingerprint did not change, so the fingerprint holds every setting
    of its block, whatever its value, except what never changes the output: sharing embeddings across
    datasets, `cv` with one penalty, and the debiasing's reference datasets (inputs, fingerprinted apart)."""
    from dataclasses import asdict, replace
    from pathlib import Path

    from qrm_hf.training.pipeline import TrainConfig, build_plan

    paper = Path(__file__).resolve().parent.parent / "training" / "configs" / "paper.yaml"
    config = TrainConfig.from_yaml(paper, output_dir=tmp_path)
    stages = {stage.name: stage.settings for stage in build_plan(config)}
    extraction = {k: v for k, v in asdict(config.extraction).items() if k != "reuse_across_datasets"}
    extract = next(settings for name, settings in stages.items() if name.startswith("extract "))
    assert {k: extract[k] for k in extraction} == extraction
    assert set(extract) == {"backbone", "dataset", "data_content", *extraction}
    heads = {k: v for k, v in asdict(config.quantile_heads).items() if k != "cv"}  # one penalty: cv unused
    assert stages["fit-quantiles"] == {**heads, "attributes": config.attributes}
    assert replace(config.quantile_heads, alpha="cv").fingerprint()["cv"] == config.quantile_heads.cv
    assert stages["debias"] == {k: v for k, v in asdict(config.debias).items() if k != "reference_datasets"}
    assert stages["fit-gating"] == asdict(config.gating)
    assert stages["assemble"] == {"backbone": extract["backbone"], **asdict(config.model)}
