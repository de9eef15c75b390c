"""The training objectives compared in the seed paper's Table 2 and in the privacy table.

Each method says which loss trains the encoder and how its classifier is obtained:

- ``ce``: cross-entropy, encoder and linear classifier trained jointly ("vanilla").
- ``ce-end``: CE + EnD (Tartaglione, Barbano, Grangetto, CVPR 2021,
  https://arxiv.org/abs/2103.02023): ``CE + alpha R_perp + beta R_par`` on the pooled features,
  classifier trained jointly.
- ``supcon``: SupCon (Khosla et al., NeurIPS 2020, https://arxiv.org/abs/2004.11362).
- ``eps-supinfonce``: epsilon-SupInfoNCE (Barbano et al., ICLR 2023,
  https://arxiv.org/abs/2211.05568), seed Eq. 2.
- ``eps-supinfonce-fairkl``: ``alpha * epsilon-SupInfoNCE + lambda * FairKL`` (seed Eq. 7).

The contrastive methods train the encoder on the L2-normalised features only; their linear
classifier is trained at the same time on the *detached* features with its own optimiser, as
the ICLR 2023 reference code does, so the encoder never sees a cross-entropy gradient (a linear
evaluation that needs no second pass over the data).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from brainage.errors import BrainAgeError

if TYPE_CHECKING:  # torch is imported when an objective is built, so the CLI can read METHODS cheaply
    from torch import Tensor

__all__ = ["METHODS", "METHOD_LABELS", "MethodConfig", "Objective", "build_objective"]

METHODS = ("ce", "supcon", "eps-supinfonce", "eps-supinfonce-fairkl", "ce-end")

#: Row labels of the tables.
METHOD_LABELS = {
    "ce": "CE (vanilla)",
    "supcon": "SupCon",
    "eps-supinfonce": "eps-SupInfoNCE",
    "eps-supinfonce-fairkl": "eps-SupInfoNCE + FairKL",
    "ce-end": "CE + EnD",
}


@dataclass
class MethodConfig:
    """Hyper-parameters of a method (only those the method uses are read).

    Attributes:
        name: one of :data:`METHODS`.
        temperature: tau of SupCon / epsilon-SupInfoNCE (0.1 in the papers).
        epsilon: margin of epsilon-SupInfoNCE, in logit units.
        alpha: weight of epsilon-SupInfoNCE in the FairKL objective.
        lambd: weight of FairKL.
        fairkl_formulation: ``"reference"`` (the code behind the published numbers) or ``"paper"``.
        end_alpha, end_beta: weights of EnD's R_perp and R_par.
    """

    name: str
    temperature: float = 0.1
    epsilon: float = 0.25
    alpha: float = 1.0
    lambd: float = 1.0
    fairkl_formulation: str = "reference"
    end_alpha: float = 0.1
    end_beta: float = 0.1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise BrainAgeError(f"unknown method {self.name!r}; choose one of {METHODS}")

    @property
    def contrastive(self) -> bool:
        """True when the encoder is trained without cross-entropy (classifier on detached features)."""
        return self.name in ("supcon", "eps-supinfonce", "eps-supinfonce-fairkl")

    @property
    def feature_activation(self) -> str:
        """Tanh on the features when a loss acts on them (EnD, contrastive), as in the reference code."""
        return "none" if self.name == "ce" else "tanh"

    def to_dict(self) -> dict:
        return asdict(self)


class Objective:
    """The loss of one method on one batch.

    Call with the features ``(B, V, D)`` (not normalised; V views of each sample), the logits
    of the first view ``(B, C)`` (computed on detached features for the contrastive methods),
    labels and bias ``(B,)``; returns ``(encoder_loss,
    classifier_loss, parts)`` where ``parts`` holds detached scalars for logging. For the joint
    methods the classifier loss is already part of the encoder loss and ``classifier_loss`` is
    ``None``.
    """

    def __init__(self, config: MethodConfig) -> None:
        import torch.nn.functional as F

        from brainage.losses import EnDRegularizer, EpsilonSupInfoNCE, FairKL, SupConLoss

        self._F = F

        self.config = config
        self.contrastive = None
        self.fairkl = None
        self.end = None
        if config.name == "supcon":
            self.contrastive = SupConLoss(temperature=config.temperature)
        elif config.name in ("eps-supinfonce", "eps-supinfonce-fairkl"):
            self.contrastive = EpsilonSupInfoNCE(epsilon=config.epsilon, temperature=config.temperature)
        if config.name == "eps-supinfonce-fairkl":
            self.fairkl = FairKL(formulation=config.fairkl_formulation)
        if config.name == "ce-end":
            self.end = EnDRegularizer(alpha=config.end_alpha, beta=config.end_beta)

    def __call__(
        self, features: Tensor, logits: Tensor, labels: Tensor, bias: Tensor
    ) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        F = self._F
        parts: dict[str, float] = {}
        ce = F.cross_entropy(logits, labels)
        parts["ce"] = float(ce.detach())
        if self.contrastive is None:
            loss = ce
            if self.end is not None:
                reg = self.end(features[:, 0], labels, bias)
                parts["end"] = float(reg.detach())
                loss = loss + reg
            return loss, None, parts
        z = F.normalize(features, dim=-1)
        loss = self.contrastive(z, labels)
        parts["contrastive"] = float(loss.detach())
        if self.fairkl is not None:
            reg = self.fairkl(z, labels, bias)
            parts["fairkl"] = float(reg.detach())
            loss = self.config.alpha * loss + self.config.lambd * reg
        return loss, ce, parts


def build_objective(config: MethodConfig) -> Objective:
    """The :class:`Objective` of ``config``."""
    return Objective(config)
