"""Stage 4, fit-gating: the gating MLP, trained with the Bradley-Terry loss on expected rewards.

The quantile heads are frozen, so each preference pair reduces to the prompt embedding and the
per-attribute expected rewards of its two responses; the gating network g then only has to make

    P(chosen > rejected) = sigmoid(g(prompt) . r_chosen - g(prompt) . r_rejected)

large. Paper defaults: AdamW, lr 3e-4, batch 1024, cosine decay, weight decay 1e-3, 3 epochs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..modeling.configuration_qrm import QRMConfig
from ..modeling.modeling_qrm import QRMGatingNetwork


def expected_rewards(
    head_weight: torch.Tensor,
    transform: torch.Tensor,
    embeddings: torch.Tensor,
    head_intercept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-attribute expected rewards after the transform: mean_k Q[m, k] with Q = heads(x), Q^T . T.

    head_weight [M, K, H], head_intercept [M, K] (None: heads without bias), transform [M, M],
    embeddings [..., H] -> [..., M].
    """
    mean_reward = embeddings.float() @ head_weight.mean(1).T  # the mean over levels of a linear map is linear
    if head_intercept is not None:
        mean_reward = mean_reward + head_intercept.mean(1)
    return mean_reward @ transform


class BradleyTerryGating:
    """Fits a `QRMGatingNetwork` on preference pairs, scikit-learn style.

    Parameters follow the paper; `validation_fraction` of the pairs (seeded) are held out and the
    validation accuracy is logged after every epoch in `history_`.
    """

    def __init__(
        self,
        config: QRMConfig,
        learning_rate: float = 3e-4,
        batch_size: int = 1024,
        epochs: int = 3,
        weight_decay: float = 1e-3,
        validation_fraction: float = 0.1,
        seed: int = 0,
    ):
        self.config = config
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.seed = seed

    def fit(
        self, prompt_embeddings: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
    ):
        """prompt_embeddings [N, H]; chosen_rewards, rejected_rewards [N, M] (expected reward per attribute)."""
        n = prompt_embeddings.shape[0]
        if not (chosen_rewards.shape == rejected_rewards.shape == (n, self.config.num_attributes)):
            raise ValueError(
                f"Expected rewards of shape [{n}, {self.config.num_attributes}], got {tuple(chosen_rewards.shape)} "
                f"and {tuple(rejected_rewards.shape)}."
            )
        if prompt_embeddings.shape[1] != self.config.hidden_size:
            raise ValueError(
                f"Prompt embeddings have hidden size {prompt_embeddings.shape[1]}, the model {self.config.hidden_size}."
            )
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        order = torch.randperm(n, generator=generator)
        n_validation = int(round(n * self.validation_fraction))
        validation, train = order[:n_validation], order[n_validation:]
        x = prompt_embeddings.float()
        margin = (chosen_rewards - rejected_rewards).float()  # [N, M]: g . margin is the reward difference

        network = QRMGatingNetwork(self.config)
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        steps_per_epoch = math.ceil(len(train) / self.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, steps_per_epoch * self.epochs)
        )
        self.history_ = []
        progress = tqdm(range(self.epochs), desc="fitting gating (Bradley-Terry)", unit="epoch")
        for epoch in progress:
            network.train()
            shuffled = train[torch.randperm(len(train), generator=generator)]
            total = 0.0
            for start in range(0, len(shuffled), self.batch_size):
                batch = shuffled[start : start + self.batch_size]
                if len(batch) < 2 and self.config.gating_batch_norm:
                    continue  # BatchNorm cannot train on a single example
                loss = -F.logsigmoid((network(x[batch]) * margin[batch]).sum(-1)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(batch)
            record = {"epoch": epoch + 1, "train_loss": total / max(1, len(train))}
            if n_validation:
                record["validation_accuracy"] = self._accuracy(network, x[validation], margin[validation])
            self.history_.append(record)
            progress.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        network.eval()
        self.network_ = network
        return self

    @staticmethod
    @torch.no_grad()
    def _accuracy(network: QRMGatingNetwork, x: torch.Tensor, margin: torch.Tensor) -> float:
        network.eval()
        accuracy = ((network(x) * margin).sum(-1) > 0).float().mean().item()
        network.train()
        return accuracy
