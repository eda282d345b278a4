"""Every default is defined once: the same setting has the same value whichever entry point reads it.

The command-line checks walk every `qrm` subcommand (`qrm_hf.cli.build_parser`), so an option added later
with its own copy of a default fails here.
"""

from __future__ import annotations

import argparse

import torch

from qrm_hf import risk
from qrm_hf.cli import build_parser
from qrm_hf.rewardbench import parse_rank_by
from qrm_hf.scoring import risk_summary

CVAR_ALPHA = risk.RISK_PARAMETERS["alpha"].default
LEVELS = [round(0.05 * k, 2) for k in range(1, 20)]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def every_command_parser() -> dict[str, argparse.ArgumentParser]:
    """The parser of each `qrm` command and, for the commands whose other options are a TRL config's fields
    (`qrm sft`, `rloo`, `grpo`), the `TrlParser` of that config too."""
    from trl import TrlParser

    from qrm_hf.cli_rlhf import COMMANDS, trainer_config_class

    parsers = subcommands()
    parsers.update({f"{name} (trainer)": TrlParser((trainer_config_class(name),)) for name in COMMANDS})
    return parsers


def cvar_tail_options() -> dict[str, argparse.Action]:
    """Every option of every `qrm` command that sets the tail mass of the CVaR (its help says so)."""
    found = {}
    for name, parser in every_command_parser().items():
        for action in parser._actions:
            if "alpha" in action.dest and "cvar" in (action.help or "").lower():
                found[f"qrm {name} {action.option_strings[0]}"] = action
    return found


def test_the_cvar_tail_mass_has_one_default_at_every_entry_point():
    options = cvar_tail_options()
    expected = {
        "qrm score --alpha",
        "qrm evaluate --alpha",
        *(f"qrm {c} (trainer) --risk_alpha" for c in ("rloo", "grpo")),
    }
    assert expected <= set(options), sorted(options)
    assert {name: action.default for name, action in options.items()} == dict.fromkeys(options, CVAR_ALPHA)
    # the library: the printed table of `qrm score` / `qrm evaluate` and the ranking of `qrm rewardbench`
    q = torch.randn(4, len(LEVELS)).sort(-1).values
    expected = risk.cvar(q, LEVELS, CVAR_ALPHA)
    table = risk_summary(q, LEVELS)
    torch.testing.assert_close(torch.tensor([row["cvar"] for row in table]), expected.float())
    measure, values = parse_rank_by("cvar")
    assert measure.name == "cvar" and values == {"alpha": CVAR_ALPHA}
    # the risk-aware trainers (their config field, and a spec without a value)
    from qrm_hf.training.risk_rewards import RiskAwareRewardsArguments

    assert RiskAwareRewardsArguments.__dataclass_fields__["risk_alpha"].default == CVAR_ALPHA
    torch.testing.assert_close(risk.resolve("cvar", LEVELS)(q), expected)


def test_the_guides_table_of_risk_fields_states_their_defaults():
    """docs/guide.md lists the risk fields of the trainer configs with their defaults: a copy that drifted
    (it once said 0.25 for `risk_alpha`) tells users another reward than they train with."""
    import re
    from dataclasses import MISSING, fields
    from pathlib import Path

    from qrm_hf.training.risk_rewards import RiskAwareRewardsArguments

    guide = (Path(__file__).parents[1] / "docs" / "guide.md").read_text()
    stated = dict(re.findall(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", guide, flags=re.MULTILINE))
    for field in fields(RiskAwareRewardsArguments):
        default = field.default if field.default is not MISSING else field.default_factory()
        text = stated[field.name].strip().strip("`")
        written = [float(x) for x in text.split(",")] if isinstance(default, list) else text
        assert written == (default if isinstance(default, list | str) else str(default)), field.name


def test_the_extraction_encoder_restates_no_setting_of_qrm_extract():
    """`BackboneEncoder` (library layer, which may not import training) takes every setting it shares with
    `ExtractionSettings` without a default: a copy of its own (it had `batch_size=16`) could drift."""
    import inspect
    from dataclasses import fields

    from qrm_hf.scoring import BackboneEncoder
    from qrm_hf.training.settings import ExtractionSettings

    parameters = inspect.signature(BackboneEncoder).parameters
    shared = [f.name for f in fields(ExtractionSettings) if f.name in parameters]
    assert "batch_size" in shared
    assert {name: parameters[name].default for name in shared} == dict.fromkeys(
        shared, inspect.Parameter.empty
    )


def test_every_stage_takes_its_settings_as_one_dataclass():
    """A stage function (and the backbone loader of the extraction) takes `settings`, never one of its fields
    with a default of its own: the dataclass is the only place of a stage's defaults."""
    import inspect
    from dataclasses import fields

    from qrm_hf.training import settings, stages

    for function, cls in [
        (stages.load_extraction_backbone, settings.ExtractionSettings),
        (stages.extract_features, settings.ExtractionSettings),
        (stages.fit_quantile_heads, settings.HeadsSettings),
        (stages.fit_debias, settings.DebiasSettings),
        (stages.fit_gating, settings.GatingSettings),
        (stages.assemble_model, settings.AssembleSettings),
    ]:
        parameters = inspect.signature(function).parameters
        assert "settings" in parameters, function.__name__
        repeated = set(parameters) & {f.name for f in fields(cls)}
        assert not repeated, f"{function.__name__} takes {sorted(repeated)} besides its {cls.__name__}"


def test_the_gating_network_defaults_are_the_model_configs():
    """The sizes of the gating network are defined once, in modeling/configuration_qrm.py: the config, the
    network built without a config, the training settings and `qrm fit-gating` all take them from there."""
    import inspect

    from conftest import tiny_backbone_config
    from qrm_hf.modeling.configuration_qrm import GATING_DEFAULTS, QRMConfig
    from qrm_hf.modeling.modeling_qrm import QRMGatingSizes
    from qrm_hf.training.gating import BradleyTerryGating
    from qrm_hf.training.settings import GatingSettings, settings_from_args

    config = QRMConfig(backbone_config=tiny_backbone_config())
    assert {name: getattr(config, name) for name in GATING_DEFAULTS} == GATING_DEFAULTS
    sizes = QRMGatingSizes(hidden_size=8, num_attributes=2)
    assert {name: getattr(sizes, name) for name in GATING_DEFAULTS} == GATING_DEFAULTS
    assert GatingSettings().config_kwargs() == GATING_DEFAULTS
    args = subcommands()["fit-gating"].parse_args(["heads", "pairs", "--output-dir", "out"])
    assert settings_from_args(GatingSettings, args).config_kwargs() == GATING_DEFAULTS
    # the fit's own defaults are GatingSettings'
    settings = GatingSettings()
    for name, parameter in inspect.signature(BradleyTerryGating).parameters.items():
        if name != "config":
            assert parameter.default == getattr(settings, name), name


def test_every_setting_of_the_saved_model_takes_the_model_configs_default():
    """A stage setting that is a `QRMConfig` field (`quantile_mixing`, `hidden_dim` = `gating_hidden_dim`,
    ...) is a `model_setting`: its default is the config's, read from modeling/configuration_qrm.py."""
    import dataclasses
    import inspect

    from conftest import tiny_backbone_config
    from qrm_hf.modeling.configuration_qrm import QRMConfig
    from qrm_hf.training import settings

    config = QRMConfig(backbone_config=tiny_backbone_config())
    config_fields = set(inspect.signature(QRMConfig.__init__).parameters) - {"self", "kwargs"}
    stage_settings = [cls for cls in vars(settings).values() if dataclasses.is_dataclass(cls)]
    checked = 0
    for cls in stage_settings:
        made = cls()
        for f in dataclasses.fields(cls):
            names = {f.name, f"gating_{f.name}"} & config_fields
            if cls is settings.HeadsSettings and f.name == "quantile_levels":
                continue  # PAPER_LEVELS, test_settings checks it against DEFAULT_QUANTILE_LEVELS
            if names:
                assert f.metadata.get("config_field") in names, f"{cls.__name__}.{f.name}: use model_setting"
                assert getattr(made, f.name) == getattr(config, f.metadata["config_field"])
                checked += 1
    assert checked >= 6  # the gating sizes, the mixing and the fallback


def test_the_quantile_heads_estimator_takes_the_defaults_of_fit_quantiles():
    import inspect

    from qrm_hf.training.quantile_regression import MultiQuantileRegressor
    from qrm_hf.training.settings import HeadsSettings

    parameters = inspect.signature(MultiQuantileRegressor).parameters
    settings = HeadsSettings()
    for parameter, setting in [
        ("alpha", "alpha"),
        ("solver", "solver"),
        ("max_samples_per_attribute", "max_samples_per_attribute"),
        ("random_state", "seed"),
        ("n_jobs", "n_jobs"),
        ("cv", "cv"),
    ]:
        assert parameters[parameter].default == getattr(settings, setting), parameter


def test_preference_strength_refits_with_the_defaults_of_the_stages():
    """`qrm preference-strength` refits heads and gating networks: the penalty and solver of `qrm fit-quantiles`
    and the learning rate of `qrm fit-gating` (its epochs and batch size are its own: a few hundred pairs)."""
    from qrm_hf.training.settings import GatingSettings, HeadsSettings

    args = subcommands()["preference-strength"].parse_args(["model", "--pairs", "pairs.jsonl"])
    assert (args.alpha, args.solver) == (HeadsSettings().alpha, HeadsSettings().solver)
    assert args.gating_learning_rate == GatingSettings().learning_rate
