"""Bootstrap ensembles of QRM heads: preference strength as the vote of many reward models, cheaply.

Secrets of RLHF II (Wang et al. 2024) measure the strength of a preference pair with ten reward models:
the mean of their reward margins says which response the models prefer, the standard deviation how much
they agree. With a frozen backbone, a QRM's reward models differ only in their linear heads and gating
network, which refit on the cached features in seconds: `fit_bootstrap_heads` refits the quantile heads
on bootstrap resamples of the rated responses (multinomial `sample_weight`, the same as resampling; the
ratings of one response are drawn together) and, given preference features, the gating network on
resamples of the pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from tqdm.auto import tqdm

from ..modeling.modeling_qrm import QRMGatingNetwork, member_quantiles, mixture_quantiles
from ..preference import preference_probability
from .rewards import reward_transform_module


@dataclass
class PairFeatures:
    """The embeddings of preference pairs: `prompt`, `chosen`, `rejected`, each [N, H] (float32)."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    @classmethod
    def from_dirs(cls, directories) -> PairFeatures:
        """Read preference feature directories of `qrm extract` (one backbone), in order."""
        from .features import load_pairs

        return cls(*load_pairs(directories))

    def __len__(self) -> int:
        return self.prompt.shape[0]

    def __getitem__(self, index) -> PairFeatures:
        return PairFeatures(self.prompt[index], self.chosen[index], self.rejected[index])

    def flipped(self, mask) -> PairFeatures:
        """The same pairs with chosen and rejected swapped where `mask` [N] is true (relabelled data)."""
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)[:, None]
        return PairFeatures(
            self.prompt,
            torch.where(mask, self.rejected, self.chosen),
            torch.where(mask, self.chosen, self.rejected),
        )


@dataclass
class EnsembleStrength:
    """Strength of pairs under an ensemble (each [N]): `mean` and `std` of the members' expected-reward
    margins (Secrets of RLHF II) and `probability`, the members' mean P(R_chosen > R_rejected)."""

    mean: np.ndarray
    std: np.ndarray
    probability: np.ndarray


@dataclass
class HeadEnsemble:
    """E reward models sharing a frozen backbone: heads, transform and gating of each member.

    coef [E, M, K, H], intercept [E, M, K], transform [M, M] (shared), gating: E networks, or one shared
    by all members. Members compute their heads with the model's `member_quantiles`.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    transform: torch.Tensor
    gating: list[QRMGatingNetwork]
    quantile_levels: list[float]
    monotone_quantiles: bool = True
    quantile_mixing: str = "average"

    def __len__(self) -> int:
        return self.coef.shape[0]

    @torch.no_grad()
    def attribute_quantiles(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each member's attribute quantiles [E, N, M, K] of responses [N, H] (transformed; sorted when
        `monotone_quantiles`), by the model's own `member_quantiles`."""
        num_members, num_attributes = self.coef.shape[:2]
        raw = torch.einsum("nh,emkh->nemk", embeddings.float(), self.coef.float()) + self.intercept.float()
        quantiles = member_quantiles(
            raw.flatten(1),
            num_members,
            num_attributes,
            reward_transform_module(self.transform),
            self.monotone_quantiles,
        )
        return quantiles.transpose(0, 1)

    @torch.no_grad()
    def score(
        self, embeddings: torch.Tensor, prompt_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected rewards [E, N], reward quantiles [E, N, K]) of responses [N, H] after prompts [N, H]."""
        prompt_embeddings = prompt_embeddings.float()
        expected, quantiles = [], []
        for member, attribute_quantiles in enumerate(self.attribute_quantiles(embeddings)):
            network = self.gating[member if len(self.gating) > 1 else 0].eval()
            weights = network(prompt_embeddings).float()  # [N, M]
            expected.append((weights * attribute_quantiles.mean(-1)).sum(-1))
            if self.quantile_mixing == "mixture":
                levels = torch.tensor(self.quantile_levels, dtype=torch.float32)
                quantiles.append(mixture_quantiles(attribute_quantiles.sort(-1).values, weights, levels))
            else:
                quantiles.append(torch.einsum("nm,nmk->nk", weights, attribute_quantiles))
        return torch.stack(expected), torch.stack(quantiles)

    def margins(self, pairs: PairFeatures) -> torch.Tensor:
        """Expected reward of chosen minus rejected under every member: [E, N]."""
        return self.score(pairs.chosen, pairs.prompt)[0] - self.score(pairs.rejected, pairs.prompt)[0]

    def strength(self, pairs: PairFeatures) -> EnsembleStrength:
        """Mean and standard deviation of the members' margins, and their mean preference probability."""
        chosen_expected, chosen_quantiles = self.score(pairs.chosen, pairs.prompt)
        rejected_expected, rejected_quantiles = self.score(pairs.rejected, pairs.prompt)
        margins = (chosen_expected - rejected_expected).double()
        probability = preference_probability(chosen_quantiles, rejected_quantiles).double().mean(0)
        return EnsembleStrength(
            mean=margins.mean(0).numpy(),
            std=margins.std(0, correction=1 if len(self) > 1 else 0).numpy(),
            probability=probability.numpy(),
        )


def _bootstrap_counts(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bootstrap resample of the groups [n] (G distinct responses: G draws with replacement) as row
    weights [n]: every row weighs as often as its group was drawn. Resampling responses rather than rating
    rows keeps the annotators of one response together, as a new sample of responses would."""
    n_groups = int(groups.max()) + 1
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups)).astype(np.float64)[groups]


def fit_member_heads(X, Y, groups, estimator, n_models: int, seed: int = 0, desc: str = "bootstrap ensemble"):
    """Refit `estimator`'s heads `n_models` times on bootstrap resamples of the responses (`groups` [n]
    from `identical_row_groups`): a list of (fitted copy of `estimator`, its generator) per member.

    Member e draws from `np.random.default_rng([seed, e])`; its generator is returned for further draws
    (the gating resample of `fit_bootstrap_heads`)."""
    members = []
    for member in tqdm(range(n_models), desc=desc, unit="model"):
        rng = np.random.default_rng([seed, member])
        heads = clone(estimator).set_params(random_state=int(rng.integers(2**31)))
        members.append((heads.fit(X, Y, sample_weight=_bootstrap_counts(groups, rng)), rng))
    return members


def _pair_features_of(pair_features, settings: dict, hidden_size: int):
    """`pair_features` (directories or a `PairFeatures`, or None) as a `PairFeatures` of the same backbone."""
    if isinstance(pair_features, (str, Path, list, tuple)):
        from .features import check_same_backbone, read_manifest

        pair_dirs = [pair_features] if isinstance(pair_features, (str, Path)) else list(pair_features)
        check_same_backbone(
            {**settings, **{str(d): read_manifest(d, kind="preference")["settings"] for d in pair_dirs}}
        )
        pair_features = PairFeatures.from_dirs(pair_dirs)
    if pair_features is not None and pair_features.prompt.shape[1] != hidden_size:
        raise ValueError(
            f"The pair features have hidden size {pair_features.prompt.shape[1]}, the attribute features "
            f"{hidden_size}: they come from different backbones."
        )
    return pair_features


def _check_ensemble_arguments(n_models: int, pair_features, gating_network) -> None:
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}.")
    if (pair_features is None) == (gating_network is None):
        raise ValueError(
            "Give either pair_features (each member refits its gating network) or a gating_network shared "
            "by all members: the ensemble needs gating weights to turn attributes into one reward."
        )


def fit_bootstrap_heads(
    features,
    n_models: int = 10,
    seed: int = 0,
    *,
    estimator=None,
    attribute_names: Sequence[str] | None = None,
    pair_features=None,
    gating_settings=None,
    gating_network: QRMGatingNetwork | None = None,
    transform: torch.Tensor | None = None,
    monotone_quantiles: bool = True,
    quantile_mixing: str = "average",
) -> HeadEnsemble:
    """Refit the quantile heads (and the gating network) of a QRM on `n_models` bootstrap resamples.

    Args:
        features: attribute feature directories of `qrm extract` (one or a list, same backbone).
        n_models: ensemble size E (Secrets of RLHF II used 10 reward models).
        seed: member e draws its resamples from `np.random.default_rng([seed, e])`.
        estimator: a `MultiQuantileRegressor` whose settings the members copy (`sklearn.clone`; default:
            the paper's 19 levels and alpha with the fast solver).
        attribute_names: head order (default: the features' attributes in order of appearance).
        pair_features: preference feature directories or a `PairFeatures`: each member also refits the
            gating network (Bradley-Terry with `gating_settings`, no validation split) on a resample of the
            pairs, on its own heads' rewards.
        gating_network: without `pair_features`, the gating network all members share (e.g. a model's).
        transform: the reward transform T [M, M] (default identity), shared.
    """
    from .features import attribute_names_of, feature_settings, load_labelled
    from .quantile_regression import MultiQuantileRegressor, identical_row_groups
    from .settings import PAPER_LEVELS

    _check_ensemble_arguments(n_models, pair_features, gating_network)
    directories = [features] if isinstance(features, (str, Path)) else list(features)
    settings = feature_settings(directories, "attribute")
    names = attribute_names_of(directories, attribute_names)
    X, Y = load_labelled(directories, names)
    estimator = estimator if estimator is not None else MultiQuantileRegressor(PAPER_LEVELS)
    transform = torch.eye(len(names)) if transform is None else torch.as_tensor(transform).float()
    pair_features = _pair_features_of(pair_features, settings, X.shape[1])
    members = fit_member_heads(X, Y, identical_row_groups(X), estimator, n_models, seed)
    coef = torch.stack([torch.tensor(heads.coef_, dtype=torch.float32) for heads, _ in members])
    intercept = torch.stack([torch.tensor(heads.intercept_, dtype=torch.float32) for heads, _ in members])
    networks = []
    if pair_features is not None:
        generators = [rng for _, rng in members]
        networks = _fit_member_gatings(
            coef, intercept, transform, pair_features, names, generators, gating_settings
        )
    return HeadEnsemble(
        coef=coef,
        intercept=intercept,
        transform=transform,
        gating=networks or [gating_network],
        quantile_levels=list(estimator.quantile_levels),
        monotone_quantiles=monotone_quantiles,
        quantile_mixing=quantile_mixing,
    )


def _fit_member_gatings(coef, intercept, transform, pairs: PairFeatures, names, generators, settings=None):
    """Each member's gating network (the stage's fit of `settings`, without validation split or remedies), on
    a resample of the pairs drawn from its generator (`fit_member_heads`)."""
    from .gating import bradley_terry_gating
    from .rewards import expected_rewards
    from .settings import GatingSettings

    settings = replace(settings or GatingSettings(), validation_fraction=0.0, restore_best_epoch=False)
    networks = []
    for member, rng in enumerate(generators):
        resample = pairs[torch.as_tensor(rng.integers(0, len(pairs), len(pairs)))]
        seeded = replace(settings, seed=int(rng.integers(2**31)))
        gating = bradley_terry_gating(names, coef.shape[-1], seeded, plain=True).fit(
            resample.prompt,
            expected_rewards(coef[member], transform, resample.chosen, intercept[member]),
            expected_rewards(coef[member], transform, resample.rejected, intercept[member]),
        )
        networks.append(gating.network_)
    return networks


__all__ = ["EnsembleStrength", "HeadEnsemble", "PairFeatures", "fit_bootstrap_heads", "fit_member_heads"]
