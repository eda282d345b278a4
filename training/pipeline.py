"""`qrm train CONFIG`: all stages of a QRM from one YAML file, skipping what is already done.

The YAML file (see ``training/configs/paper.yaml`` for every key, ``demo.yaml`` for a small run):

    output_dir: outputs/run            # features/, heads/, debias/, gating/, model/ go here
    backbone: sfairXC/FsfairX-LLaMA3-RM-v0.1   # Hub id, local directory, or embedded:smollm2
    attributes: [...]                  # optional: head order (default: the datasets' attributes)
    extraction: {max_length, batch_size, shard_size, dtype, reuse_across_datasets}
    attribute_datasets: [{preset: helpsteer, split: train, limit: ...}, {kind: attribute, source: ..., ...}]
    validation_datasets: [...]         # optional held-out attribute data: pinball loss, crossing fraction
    quantile_heads: {quantile_levels, alpha (a number, a list or "cv"), cv, solver, max_samples_per_attribute,
                     seed, n_jobs, ridge_baseline, gaussian_baseline}
    debias: {reference_datasets: [...], verbosity_attribute, threshold}   # or null: T = identity
    preference_datasets: [...]
    gating: {hidden_dim, n_hidden, temperature, batch_norm, learning_rate, batch_size, epochs, ...}
    model: {quantile_mixing, gating_fallback, datasets, homepage, push_to_hub}

Each stage's output is fingerprinted by its settings and its inputs (backbone, the content of local
data files, the fingerprints of the stages it reads), recorded in ``<output_dir>/pipeline_state.json``
with the format version of the fingerprints (`STATE_FORMAT_VERSION`). A stage whose output is complete
with the same fingerprint is skipped; a changed input re-runs the stage and everything after it; an
interrupted extraction resumes its complete shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..dataset_loading import looks_like_local_path
from ..io import (
    check_outputs_apart_from_inputs,
    claim_directory,
    directory_lock,
    output_id,
    remove_output,
    restore_interrupted_replacement,
    write_json_atomic,
)
from .features import EXTRACT_COMMAND, content_signature, damaged_shards
from .quantile_regression import MultiQuantileRegressor
from .settings import (
    AssembleSettings,
    DebiasSettings,
    ExtractionSettings,
    GatingSettings,
    HeadsSettings,
    check_keys,
    settings_from_mapping,
)
from .stages import (
    DatasetSpec,
    assemble_model,
    extract_features,
    fit_debias,
    fit_gating,
    fit_quantile_heads,
    load_extraction_backbone,
    resolve_backbone,
)

STATE = (
    "pipeline_state.json"  # {"format_version": N, "stages": {stage name: {fingerprint, complete, output}}}
)
# What a fingerprint covers. Bump it when a stage's output changes for the same settings and inputs: a state
# of another version (files without one are version 1) is not compared, and every stage runs again as in a
# new output directory (an extraction still keeps the shards its own manifest vouches for).
STATE_FORMAT_VERSION = 2
TRAIN_COMMAND = "qrm train"  # the owner of a run's output directory (`qrm_hf.io` markers)


@dataclass
class TrainConfig:
    """A whole run; `TrainConfig.from_yaml(path)` reads the YAML file described in the module docstring."""

    output_dir: Path
    backbone: str
    attribute_datasets: list[DatasetSpec]
    preference_datasets: list[DatasetSpec]
    backbone_revision: str | None = None
    attributes: list[str] | None = None
    validation_datasets: list[DatasetSpec] = field(default_factory=list)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)
    quantile_heads: HeadsSettings = field(default_factory=HeadsSettings)
    debias: DebiasSettings | None = None
    gating: GatingSettings = field(default_factory=GatingSettings)
    model: AssembleSettings = field(default_factory=AssembleSettings)

    @classmethod
    def from_yaml(cls, path: str | Path, output_dir: str | Path | None = None) -> TrainConfig:
        """Read and validate a config file; local data paths are relative to the file's directory."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:  # not a ValueError: one line here, not a parser traceback
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings at the top level.")
        try:
            return cls.from_dict(values, base_dir=path.parent, where=str(path), output_dir=output_dir)
        except (TypeError, AttributeError) as error:  # a list where a path goes, a number where a list goes
            raise ValueError(f"{path}: a setting has the wrong type ({error}).") from error

    @classmethod
    def from_dict(cls, values: dict, base_dir: Path = Path("."), where: str = "config", output_dir=None):
        values = dict(values)
        check_keys(cls, values, where)
        missing = [
            key
            for key in ("output_dir", "backbone")
            if key not in values and not (key == "output_dir" and output_dir)
        ]
        if missing:
            raise ValueError(f"{where}: missing {missing}.")

        def datasets(key: str, entries=None) -> list[DatasetSpec]:
            entries = values.get(key) if entries is None else entries
            specs = []
            for number, entry in enumerate(entries or []):
                spec = DatasetSpec.from_dict(dict(entry), where=f"{where}: {key}[{number}]")
                if spec.source is not None and (base_dir / str(spec.source)).exists():
                    spec.source = str((base_dir / str(spec.source)).resolve())
                elif spec.source is not None and looks_like_local_path(str(spec.source)):
                    raise FileNotFoundError(
                        f"{where}: {key}[{number}]: the data file {base_dir / str(spec.source)} does not exist "
                        "(local paths are relative to the config file)."
                    )
                spec.resolve()  # fails early on an unknown preset or a bad column mapping
                specs.append(spec)
            return specs

        debias = values.get("debias")
        if debias is not None:
            debias = dict(debias)
            references = datasets("reference_datasets", debias.pop("reference_datasets", None))
            if not references:
                raise ValueError(f"{where}: debias needs reference_datasets (e.g. the preference data).")
            debias = settings_from_mapping(DebiasSettings, debias, f"{where}: debias")
            debias.reference_datasets = references
        config = cls(
            output_dir=Path(output_dir or values["output_dir"]),
            backbone=str(values["backbone"]),
            backbone_revision=values.get("backbone_revision"),
            attributes=values.get("attributes"),
            attribute_datasets=datasets("attribute_datasets"),
            validation_datasets=datasets("validation_datasets"),
            preference_datasets=datasets("preference_datasets"),
            extraction=settings_from_mapping(
                ExtractionSettings, values.get("extraction"), f"{where}: extraction"
            ),
            quantile_heads=settings_from_mapping(
                HeadsSettings, values.get("quantile_heads"), f"{where}: quantile_heads"
            ),
            debias=debias,
            gating=settings_from_mapping(GatingSettings, values.get("gating"), f"{where}: gating"),
            model=settings_from_mapping(AssembleSettings, values.get("model"), f"{where}: model"),
        )
        config.check(where)
        return config

    def check(self, where: str = "config") -> None:
        """Errors a run would otherwise only meet hours later."""
        for key, kind in (
            ("attribute_datasets", "attribute"),
            ("validation_datasets", "attribute"),
            ("preference_datasets", "preference"),
        ):
            for spec in getattr(self, key):
                if spec.resolve().kind != kind:
                    raise ValueError(
                        f"{where}: {key} entry {spec.display_name!r} is {spec.resolve().kind} data; "
                        f"{key} takes {kind} data."
                    )
        if not self.attribute_datasets:
            raise ValueError(f"{where}: attribute_datasets is empty: the quantile heads need rated data.")
        heads = self.quantile_heads
        try:
            MultiQuantileRegressor(
                heads.quantile_levels, alpha=heads.alpha, cv=heads.cv, solver=heads.solver
            )._validate_settings()
        except ValueError as error:
            raise ValueError(f"{where}: quantile_heads: {error}") from None
        if not self.preference_datasets:
            raise ValueError(
                f"{where}: preference_datasets is empty: the gating network needs preference pairs."
            )
        found = list(
            dict.fromkeys(a for spec in self.attribute_datasets for a in spec.resolve().attribute_names)
        )
        if self.attributes is not None:
            unused = [a for a in self.attributes if a not in found]
            unlisted = [a for a in found if a not in self.attributes]
            if unused or unlisted:
                raise ValueError(
                    f"{where}: `attributes` must list exactly the attributes of the attribute datasets; "
                    f"without data: {unused}; labelled but not listed: {unlisted}."
                )


# ------------------------------------------------------------------------------------------- fingerprints


@dataclass
class Stage:
    """One step of the plan: what it writes, what defines its result, and how to run it."""

    name: str
    directory: Path
    settings: dict
    upstream: list[Stage]
    run: Callable[[], Any]
    # An extraction runs in every process under `accelerate launch` (each encodes its share of the
    # shards) and resumes the complete shards of an earlier run; the other stages run in the main process.
    distributed: bool = False

    def fingerprint(self) -> str:
        payload = {"settings": self.settings, "upstream": [stage.fingerprint() for stage in self.upstream]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _SharedBackbone:
    """Loads the backbone once, on first use, for all the extractions of a run."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self._loaded = None

    def get(self):
        if self._loaded is None:
            self._loaded = load_extraction_backbone(
                self.config.backbone, self.config.backbone_revision, self.config.extraction
            )
        return self._loaded


def build_plan(config: TrainConfig) -> list[Stage]:
    """The stages of a run in order, each with its fingerprinted settings (nothing is loaded).

    Each stage's fingerprint and its run come from the same settings object (`<Settings>.fingerprint()`
    and the `settings=` argument of the stage function), so that they cannot drift apart.
    """
    location, backbone_name = resolve_backbone(config.backbone)
    backbone = {
        "name": backbone_name,
        "revision": config.backbone_revision,
        "content": content_signature(location),
    }
    extract = _Extractions(config, backbone)
    attribute_stages = [extract(spec) for spec in config.attribute_datasets]
    validation_stages = [extract(spec) for spec in config.validation_datasets]
    reference_stages = [extract(spec) for spec in config.debias.reference_datasets] if config.debias else []
    pair_stages = [extract(spec) for spec in config.preference_datasets]
    heads = _heads_stage(config, attribute_stages, validation_stages)
    debias = _debias_stage(config, heads, reference_stages) if config.debias else None
    gating = _gating_stage(config, heads, debias, pair_stages)
    model = _assemble_stage(config, backbone, heads, debias, gating)
    return [*extract.stages.values(), heads, *([debias] if debias else []), gating, model]


class _Extractions:
    """The extraction stages of a run, one per feature directory (a dataset listed twice is extracted once)."""

    def __init__(self, config: TrainConfig, backbone: dict):
        self.config, self.backbone = config, backbone
        self.shared_backbone = _SharedBackbone(config)
        self.stages: dict[str, Stage] = {}

    def __call__(self, spec: DatasetSpec) -> Stage:
        config, description = self.config, spec.describe()
        kind = spec.resolve().kind
        directory = config.output_dir / "features" / kind / spec.display_name
        if str(directory) in self.stages:
            stage = self.stages[str(directory)]
            if stage.settings["dataset"] != description:
                raise ValueError(
                    f"Two different datasets are both named {spec.display_name!r}: give one of them a `name`."
                )
            return stage
        settings = config.extraction
        fingerprint = {
            "backbone": self.backbone,
            "dataset": description,
            "data_content": content_signature(description["source"]),
            **settings.fingerprint(),
        }

        def run():
            return extract_features(
                config.backbone,
                spec,
                directory,
                revision=config.backbone_revision,
                settings=settings,
                loaded=self.shared_backbone.get(),
            )

        stage = Stage(
            f"extract {kind}/{spec.display_name}", directory, fingerprint, [], run, distributed=True
        )
        self.stages[str(directory)] = stage
        return stage


def _heads_stage(config: TrainConfig, attribute_stages: list[Stage], validation_stages: list[Stage]) -> Stage:
    settings, directory = config.quantile_heads, config.output_dir / "heads"
    return Stage(
        "fit-quantiles",
        directory,
        {**settings.fingerprint(), "attributes": config.attributes},
        attribute_stages + validation_stages,
        lambda: fit_quantile_heads(
            [stage.directory for stage in attribute_stages],
            directory,
            attribute_names=config.attributes,
            validation_dirs=[stage.directory for stage in validation_stages],
            settings=settings,
        ),
    )


def _debias_stage(config: TrainConfig, heads: Stage, reference_stages: list[Stage]) -> Stage:
    settings, directory = config.debias, config.output_dir / "debias"
    return Stage(
        "debias",
        directory,
        settings.fingerprint(),
        [heads, *reference_stages],
        lambda: fit_debias(
            heads.directory, [stage.directory for stage in reference_stages], directory, settings=settings
        ),
    )


def _gating_stage(config: TrainConfig, heads: Stage, debias: Stage | None, pair_stages: list[Stage]) -> Stage:
    settings, directory = config.gating, config.output_dir / "gating"
    return Stage(
        "fit-gating",
        directory,
        settings.fingerprint(),
        [heads, *([debias] if debias else []), *pair_stages],
        lambda: fit_gating(
            heads.directory,
            [stage.directory for stage in pair_stages],
            directory,
            transform_dir=debias.directory if debias else None,
            settings=settings,
        ),
    )


def _assemble_stage(
    config: TrainConfig, backbone: dict, heads: Stage, debias: Stage | None, gating: Stage
) -> Stage:
    settings, directory = config.model, config.output_dir / "model"
    return Stage(
        "assemble",
        directory,
        {"backbone": backbone, **settings.fingerprint()},
        [heads, *([debias] if debias else []), gating],
        lambda: assemble_model(
            config.backbone,
            heads.directory,
            gating.directory,
            directory,
            transform_dir=debias.directory if debias else None,
            revision=config.backbone_revision,
            settings=settings,
        ),
    )


# ------------------------------------------------------------------------------------------- running


def recorded_format_version(output_dir: Path) -> int | None:
    """The format version of the run's state file (1 for a file without one), None without a file."""
    path = output_dir / STATE
    return json.loads(path.read_text()).get("format_version", 1) if path.exists() else None


def _read_state(output_dir: Path) -> dict:
    """The recorded stages by name; none when the state file is missing or of another format version."""
    if recorded_format_version(output_dir) != STATE_FORMAT_VERSION:
        return {}
    return json.loads((output_dir / STATE).read_text())["stages"]


def _write_state(output_dir: Path, state: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / STATE, {"format_version": STATE_FORMAT_VERSION, "stages": state})


def stage_status(stage: Stage, state: dict) -> str:
    """'up to date', 'resume' (an interrupted run of the same stage), 'changed' or 'new'."""
    entry = state.get(stage.name)
    if entry is None or not stage.directory.exists():
        return "new"
    if entry["fingerprint"] != stage.fingerprint():
        return "changed"
    if entry["complete"] and entry.get("output") != output_id(stage.directory):
        return "changed"  # replaced since by another command (`qrm fit-gating --output-dir <run>/gating`)
    return "up to date" if entry["complete"] else "resume"


def describe_plan(config: TrainConfig, plan: list[Stage]) -> str:
    """A readable plan: the datasets as resolved, then each stage with its status and output."""
    state = _read_state(config.output_dir)
    lines = [
        f"Backbone: {config.backbone}"
        + (f" @ {config.backbone_revision}" if config.backbone_revision else "")
    ]
    groups = [
        ("Attribute datasets", config.attribute_datasets),
        ("Validation datasets", config.validation_datasets),
        ("Debiasing reference datasets", config.debias.reference_datasets if config.debias else []),
        ("Preference datasets", config.preference_datasets),
    ]
    for title, specs in groups:
        if not specs:
            continue
        lines.append(f"{title} ({len(specs)}):")
        for spec in specs:
            preset = spec.resolve()
            description = spec.describe()
            where = f"{description['source']} [{description['split']}]" + (
                f" first {spec.limit}" if spec.limit else ""
            )
            lines.append(f"  - {spec.display_name}: {preset.kind} data from {where}")
            for attribute in preset.attribute_names:
                low, high = preset.label_ranges[attribute]
                lines.append(
                    f"      {attribute}: column {preset.attributes[attribute]!r}, labels {low:g}-{high:g}"
                )
    heads = config.quantile_heads
    lines.append(
        f"Quantile heads: {len(heads.quantile_levels)} levels, alpha {heads.alpha}, solver {heads.solver}, "
        f"at most {heads.max_samples_per_attribute} samples per attribute"
    )
    lines.append(f"Gating: {asdict(config.gating)}")
    version = recorded_format_version(config.output_dir)
    if version not in (None, STATE_FORMAT_VERSION):
        lines.append(
            f"{config.output_dir / STATE} has format version {version}, this qrm-hf writes {STATE_FORMAT_VERSION}: "
            "its fingerprints are not comparable, every stage runs again"
        )
    lines.append(f"Stages (output under {config.output_dir}):")
    for number, stage in enumerate(plan, 1):
        lines.append(f"  {number:2d}. {stage.name:<50} {stage_status(stage, state):<11} {stage.directory}")
    return "\n".join(lines)


def run_training(config: TrainConfig, dry_run: bool = False) -> Path:
    """Run (or with `dry_run`, only print) the plan; returns the model directory.

    Under `accelerate launch --num_processes N -m qrm_hf train CONFIG` the extractions are split across
    the N processes (one GPU each) and the other stages run in the main process.
    """
    import torch
    from accelerate import PartialState

    processes = PartialState(cpu=not torch.cuda.is_available())
    main = processes.is_main_process
    plan = build_plan(config)
    if main:
        print(describe_plan(config, plan))
    if dry_run:
        return config.output_dir / "model"
    check_outputs_apart_from_inputs(
        [("output_dir", config.output_dir, True)],
        [
            ("backbone", config.backbone),
            *(
                (f"dataset {spec.display_name}", spec.source)
                for spec in _all_datasets(config)
                if spec.source is not None
            ),
        ],
    )
    # One run per output directory: a second one would delete the files of the first.
    with directory_lock(config.output_dir, what="output directory of `qrm train`") if main else nullcontext():
        if main:  # before anything is written: a directory of someone else's files is refused
            claim_directory(config.output_dir, TRAIN_COMMAND)
        processes.wait_for_everyone()
        _run_plan(config, plan, processes)
    return config.output_dir / "model"


def _all_datasets(config: TrainConfig) -> list[DatasetSpec]:
    return [
        *config.attribute_datasets,
        *config.validation_datasets,
        *(config.debias.reference_datasets if config.debias else []),
        *config.preference_datasets,
    ]


def _run_plan(config: TrainConfig, plan: list[Stage], processes) -> None:
    main = processes.is_main_process
    if main:
        for stage in plan:
            if not stage.distributed:
                restore_interrupted_replacement(stage.directory)
    state = _read_state(config.output_dir)
    statuses = [stage_status(stage, state) for stage in plan]
    for number, stage in enumerate(plan, 1):
        if statuses[number - 1] == "up to date" and stage.distributed:
            damaged = damaged_shards(stage.directory)
            if damaged:  # e.g. a shard truncated on disk: extract it again instead of failing later
                if main:
                    print(f"[{number}/{len(plan)}] {stage.name}: damaged shard(s) {damaged}")
                statuses[number - 1] = "resume"
    # With reuse_across_datasets an extraction reuses the embeddings of the ones before it: when one has to
    # run, the finished ones before it are read back (nothing is encoded) so that it reuses exactly what an
    # uninterrupted run would have.
    last_pending = max(
        (
            n
            for n, (stage, status) in enumerate(zip(plan, statuses, strict=True))
            if stage.distributed and status != "up to date"
        ),
        default=-1,
    )
    for number, stage in enumerate(plan, 1):
        status = statuses[number - 1]
        if status == "up to date":
            if main:
                print(f"[{number}/{len(plan)}] {stage.name}: up to date, skipped")
            if stage.distributed and config.extraction.reuse_across_datasets and number - 1 < last_pending:
                stage.run()
            continue
        if main:
            if status == "changed" and stage.distributed:  # features of other settings: extracted anew
                print(
                    f"[{number}/{len(plan)}] {stage.name}: inputs changed, removing the old {stage.directory}"
                )
                remove_output(stage.directory, EXTRACT_COMMAND)
            elif status in ("changed", "new") and stage.directory.exists():
                # Written with atomic_directory: the old output stays until the new one is complete.
                print(
                    f"[{number}/{len(plan)}] {stage.name}: inputs changed, {stage.directory} is replaced once "
                    "the new one is complete"
                )
            print(f"[{number}/{len(plan)}] {stage.name}" + (" (resuming)" if status == "resume" else ""))
            state[stage.name] = {"fingerprint": stage.fingerprint(), "complete": False}
            _write_state(config.output_dir, state)
        processes.wait_for_everyone()
        if main or stage.distributed:
            stage.run()
        processes.wait_for_everyone()
        state[stage.name] = {
            "fingerprint": stage.fingerprint(),
            "complete": True,
            "output": output_id(stage.directory),
        }
        if main:
            _write_state(config.output_dir, state)
