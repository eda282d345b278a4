"""Stage 4, fit-gating: the gating MLP, trained with the Bradley-Terry loss on expected rewards.

The quantile heads are frozen, so each preference pair reduces to the prompt embedding and the
per-attribute expected rewards of its two responses; the gating network g then only has to make

    P(chosen > rejected) = sigmoid(g(prompt) . r_chosen - g(prompt) . r_rejected)

large. Paper defaults (`GatingSettings`): AdamW, lr 3e-4, batch 1024, cosine decay, weight decay 1e-3,
3 epochs.

Noisy labels (Secrets of RLHF II, Wang et al. 2024), all off by default: with the Bradley-Terry logit
z = g . (r_chosen - r_rejected) and a measured strength s in [0, 1] per pair (P(chosen > rejected),
`qrm_hf.preference`), `flip_below` swaps the pairs with s < flip_below, `drop_below` leaves out the
(remaining) pairs with s < drop_below, `adaptive_margin` c fits sigmoid(z - c (2 s' - 1)) with s' the
strength of the label as trained (1 - s for a flipped pair): clear pairs must be won by a margin,
doubtful ones less, and `label_smoothing` eps minimises -(1 - eps) log sigmoid(z) - eps log sigmoid(-z).

Against a collapsed gating (docs/design.md "Gating collapse"), all off by default (the paper's
recipe): `standardize_prompts` trains on prompt embeddings standardised per dimension -- a backbone's
prompt embeddings share one large component (cosine 0.99 to their mean on the demo), so the raw network
sees nearly the same input for every prompt and its first steps move every prompt's weights alike -- and
folds the standardisation into the first Linear layer afterwards (the saved format does not change);
`restore_best_epoch` holds out whole prompts for validation (pairs of one prompt share its gating weights,
so a split by pair measures nothing about new prompts) and keeps the epoch with the lowest validation
Bradley-Terry loss instead of the last; `fit_loss_scale` keeps `logit_scale` at 1 (weights sum to one, as
in the paper's eq. 3) and fits the Bradley-Terry loss on beta * (g . margin), beta fitted once on the uniform
mix (`bradley_terry_scale`): with rewards on the [0, 1] label scale and a scale of 1 the loss stays in its
near-linear range, where it rewards the largest mean margin rather than the most accurate mix, and the
optimum of a linear function on the simplex is one attribute.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..modeling.configuration_qrm import QRMConfig
from ..modeling.modeling_qrm import QRMGatingNetwork, QRMGatingSizes
from .settings import GatingSettings


def gating_sizes(attribute_names, hidden_size: int, settings) -> QRMGatingSizes:
    """The sizes of the gating network that `settings` (a `GatingSettings`) asks for over `attribute_names`
    and embeddings of `hidden_size` (`BradleyTerryGating` builds the network from them)."""
    return QRMGatingSizes(hidden_size, len(attribute_names), **settings.config_kwargs())


class BradleyTerryGating:
    """Fits a `QRMGatingNetwork` on preference pairs, scikit-learn style.

    Parameters and their defaults are those of `GatingSettings` (the paper's); `validation_fraction` of the pairs (seeded; with `restore_best_epoch`, of
    the prompts) are held out and the validation loss and accuracy are logged after every epoch in
    `history_`; `best_epoch_` is the epoch whose network `network_` is (the last unless `restore_best_epoch`).
    """

    def __init__(
        self,
        config: QRMGatingSizes | QRMConfig,
        learning_rate: float = GatingSettings.learning_rate,
        batch_size: int = GatingSettings.batch_size,
        epochs: int = GatingSettings.epochs,
        weight_decay: float = GatingSettings.weight_decay,
        validation_fraction: float = GatingSettings.validation_fraction,
        seed: int = GatingSettings.seed,
        label_smoothing: float = GatingSettings.label_smoothing,
        adaptive_margin: float = GatingSettings.adaptive_margin,
        flip_below: float | None = GatingSettings.flip_below,
        drop_below: float | None = GatingSettings.drop_below,
        standardize_prompts: bool = GatingSettings.standardize_prompts,
        restore_best_epoch: bool = GatingSettings.restore_best_epoch,
        fit_loss_scale: bool = GatingSettings.fit_loss_scale,
    ):
        self.config = config
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.label_smoothing = label_smoothing
        self.adaptive_margin = adaptive_margin
        self.flip_below = flip_below
        self.drop_below = drop_below
        self.standardize_prompts = standardize_prompts
        self.restore_best_epoch = restore_best_epoch
        self.fit_loss_scale = fit_loss_scale

    @property
    def needs_strength(self) -> bool:
        """Whether `fit` needs each pair's strength (margin, flipping or dropping)."""
        return bool(self.adaptive_margin) or self.flip_below is not None or self.drop_below is not None

    def _check_remedies(self) -> None:
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}.")
        if not self.adaptive_margin >= 0:
            raise ValueError(f"adaptive_margin must be >= 0, got {self.adaptive_margin}.")
        for name in ("flip_below", "drop_below"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} is a preference probability threshold in [0, 1], got {value}.")
        if self.standardize_prompts and self.config.gating_batch_norm and self.config.gating_n_hidden:
            raise ValueError(
                "standardize_prompts folds the standardisation into the bias of the first Linear layer, which "
                "the BatchNorm format (batch_norm) does not have: use one or the other."
            )

    def fit(
        self,
        prompt_embeddings: torch.Tensor,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        strength: torch.Tensor | None = None,
    ):
        """prompt_embeddings [N, H]; chosen_rewards, rejected_rewards [N, M] (expected reward per attribute);
        strength [N] in [0, 1], P(chosen > rejected) as measured (needed by the margin, flip and drop)."""
        self._check_inputs(prompt_embeddings, chosen_rewards, rejected_rewards, strength)
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        x = prompt_embeddings.float()
        validation, train = self._split(x, generator)
        if self.standardize_prompts:
            # Per-dimension statistics of the training prompts; the floor keeps constant dimensions finite.
            mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
            x = (x - mean) / std
        margin = (chosen_rewards - rejected_rewards).float()  # [N, M]: g . margin is the reward difference
        train, labels = self._noisy_labels(strength, train, len(x), len(validation))
        network = QRMGatingNetwork(self.config)
        self.loss_scale_ = 1.0
        if self.fit_loss_scale:
            self.loss_scale_ = bradley_terry_scale(margin[train].mean(-1))
            network.logit_scale.requires_grad_(False)  # weights sum to one: rewards stay on the label scale
        self._fit_network(network, x, margin, train, validation, labels, generator)
        if self.standardize_prompts:
            self._fold_standardization(network, mean, std)
        network.eval()
        self.network_ = network
        return self

    def _check_inputs(self, prompt_embeddings, chosen_rewards, rejected_rewards, strength) -> None:
        n = prompt_embeddings.shape[0]
        self._check_remedies()
        if self.needs_strength and (strength is None or tuple(strength.shape) != (n,)):
            raise ValueError(
                f"adaptive_margin / flip_below / drop_below need the strength of each of the {n} pairs."
            )
        if not (chosen_rewards.shape == rejected_rewards.shape == (n, self.config.num_attributes)):
            raise ValueError(
                f"Expected rewards of shape [{n}, {self.config.num_attributes}], got {tuple(chosen_rewards.shape)} "
                f"and {tuple(rejected_rewards.shape)}."
            )
        if prompt_embeddings.shape[1] != self.config.hidden_size:
            raise ValueError(
                f"Prompt embeddings have hidden size {prompt_embeddings.shape[1]}, the model {self.config.hidden_size}."
            )

    def _split(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(validation, train) pair indices: `validation_fraction` of the pairs, or of the prompts."""
        if self.restore_best_epoch:
            return self._split_by_prompt(x, generator)
        order = torch.randperm(len(x), generator=generator)
        n_validation = int(round(len(x) * self.validation_fraction))
        return order[:n_validation], order[n_validation:]

    def _noisy_labels(self, strength, train: torch.Tensor, n: int, n_validation: int):
        """(the training pairs left after `drop_below`; (sign [N], target margin [N]) of the Bradley-Terry
        logit z * sign - target, or None without a strength). Counts `flipped_` and `dropped_`."""
        if not self.needs_strength:
            return train, None
        strength = torch.as_tensor(strength, dtype=torch.float32)
        flip = torch.zeros(n, dtype=torch.bool)
        if self.flip_below is not None:
            flip[train] = strength[train] < self.flip_below
        if self.drop_below is not None:
            train = train[~(strength[train] < self.drop_below) | flip[train]]
        sign = 1 - 2 * flip.float()
        target = self.adaptive_margin * sign * (2 * strength - 1)
        self.flipped_, self.dropped_ = int(flip.sum()), n - n_validation - len(train)
        if len(train) == 0:
            raise ValueError(f"drop_below={self.drop_below} leaves no training pair.")
        return train, (sign, target)

    def _fit_network(self, network, x, margin, train, validation, labels, generator) -> None:
        """AdamW with cosine decay for `epochs`; `history_` and `best_epoch_` (with `restore_best_epoch`, the
        network is put back to the epoch of the lowest validation loss)."""
        optimizer = torch.optim.AdamW(
            [p for p in network.parameters() if p.requires_grad],
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
        )
        steps_per_epoch = math.ceil(len(train) / self.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, steps_per_epoch * self.epochs)
        )
        self.history_ = []
        best_loss, best_state, self.best_epoch_ = math.inf, None, self.epochs
        progress = tqdm(range(self.epochs), desc="fitting gating (Bradley-Terry)", unit="epoch")
        for epoch in progress:
            shuffled = train[torch.randperm(len(train), generator=generator)]
            loss = self._epoch(network, optimizer, scheduler, x, margin, shuffled, labels)
            record = {"epoch": epoch + 1, "train_loss": loss}
            if len(validation):
                record.update(self._validate(network, x[validation], self.loss_scale_ * margin[validation]))
                if self.restore_best_epoch and record["validation_loss"] < best_loss:
                    best_loss, best_state = record["validation_loss"], copy.deepcopy(network.state_dict())
                    self.best_epoch_ = epoch + 1
            self.history_.append(record)
            progress.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if best_state is not None:
            network.load_state_dict(best_state)

    def _epoch(self, network, optimizer, scheduler, x, margin, shuffled, labels) -> float:
        """One pass over the training pairs `shuffled` in batches; the mean training loss."""
        network.train()
        total = 0.0
        for start in range(0, len(shuffled), self.batch_size):
            batch = shuffled[start : start + self.batch_size]
            if len(batch) < 2 and self.config.gating_batch_norm:
                continue  # BatchNorm cannot train on a single example
            logit = self.loss_scale_ * (network(x[batch]) * margin[batch]).sum(-1)
            if labels is not None:
                sign, target = labels
                logit = logit * sign[batch] - target[batch]
            loss = -F.logsigmoid(logit).mean()
            if self.label_smoothing:
                loss = (1 - self.label_smoothing) * loss - self.label_smoothing * F.logsigmoid(-logit).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        return total / max(1, len(shuffled))

    def _split_by_prompt(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(validation, train) pair indices with `validation_fraction` of the distinct prompts held out whole."""
        groups = prompt_groups(x)
        n_groups = int(groups.max()) + 1
        held_out = torch.randperm(n_groups, generator=generator)[
            : int(round(n_groups * self.validation_fraction))
        ]
        in_validation = torch.isin(groups, held_out)
        train = (~in_validation).nonzero().flatten()
        if len(train) == 0:
            raise ValueError(f"validation_fraction={self.validation_fraction} leaves no training prompt.")
        return in_validation.nonzero().flatten(), train[torch.randperm(len(train), generator=generator)]

    @staticmethod
    @torch.no_grad()
    def _fold_standardization(network: QRMGatingNetwork, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Make the network take raw embeddings: W ((x - mean) / std) + b = (W / std) x + (b - (W / std) mean)."""
        first = network.layers[0]
        first.weight.div_(std)
        first.bias.sub_(first.weight @ mean)

    @staticmethod
    @torch.no_grad()
    def _validate(network: QRMGatingNetwork, x: torch.Tensor, margin: torch.Tensor) -> dict[str, float]:
        network.eval()
        logit = (network(x) * margin).sum(-1)
        network.train()
        return {
            "validation_loss": -F.logsigmoid(logit).mean().item(),
            "validation_accuracy": (logit > 0).float().mean().item(),
        }


def bradley_terry_scale(margin: torch.Tensor, bounds: tuple[float, float] = (1.0, 1000.0)) -> float:
    """The scale beta minimising the Bradley-Terry loss mean(-log sigmoid(beta * margin)) of reward margins
    [N], within `bounds` (at least the paper's 1; the upper bound when the margins are all positive and the
    loss keeps falling). The loss is convex in beta: bisection on its derivative, in log space."""
    margin = margin.double()

    def slope(beta: float) -> float:  # d/dbeta of the loss, increasing in beta
        return float(-(margin * torch.sigmoid(-beta * margin)).mean())

    low, high = math.log(bounds[0]), math.log(bounds[1])
    if slope(bounds[0]) >= 0:
        return bounds[0]
    if slope(bounds[1]) <= 0:
        return bounds[1]
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if slope(math.exp(middle)) < 0 else (low, middle)
    return math.exp((low + high) / 2)


def prompt_groups(prompt_embeddings: torch.Tensor, tolerance: float = 1e-3) -> torch.Tensor:
    """Group id [N] of each row (numbered in order of first appearance): one group per prompt, the rows of
    one prompt differing across batches by rounding only.

    Rows are sorted along a fixed random direction and a group ends where a row is farther than `tolerance`
    (relative to its norm) from the previous one: linear in N (the paper's hundreds of thousands of pairs).
    A prompt whose rows another prompt's row falls between (closer than the rounding along that direction)
    is split in two, which only makes a validation split or a count by prompt slightly finer."""
    x = prompt_embeddings.float()
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long)
    direction = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0))
    order = (x @ direction).argsort()
    steps = (x[order][1:] - x[order][:-1]).norm(dim=1)
    new_group = steps > tolerance * x[order][1:].norm(dim=1).clamp_min(1e-12)
    sorted_groups = torch.cat([torch.zeros(1, dtype=torch.long), new_group.long().cumsum(0)])
    groups = torch.empty(len(x), dtype=torch.long)
    groups[order] = sorted_groups
    first_seen: dict[int, int] = {}
    return torch.tensor([first_seen.setdefault(group, len(first_seen)) for group in groups.tolist()])


def bradley_terry_gating(
    names, hidden_size: int, settings: GatingSettings, plain: bool = False
) -> BradleyTerryGating:
    """The `BradleyTerryGating` of `settings` over `names` and embeddings of `hidden_size` (`plain`: without
    the noisy-label remedies): the one place a stage, or a bootstrap member, turns settings into a fit."""
    remedies = {} if plain else {
        "label_smoothing": settings.label_smoothing,
        "adaptive_margin": settings.adaptive_margin,
        "flip_below": settings.flip_below,
        "drop_below": settings.drop_below,
    }  # fmt: skip
    return BradleyTerryGating(
        gating_sizes(names, hidden_size, settings),
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        weight_decay=settings.weight_decay,
        validation_fraction=settings.validation_fraction,
        seed=settings.seed,
        standardize_prompts=settings.standardize_prompts,
        restore_best_epoch=settings.restore_best_epoch,
        fit_loss_scale=settings.fit_loss_scale,
        **remedies,
    )
