"""TEMPURA's mixture (GMM) heads: K Gaussian components per predicate group.

For an input ``x`` each component ``k`` has a mean ``mu_k = Linear(x)``, a variance
``var_k = sigmoid(Linear(x))`` (one per class) and a mixture weight; the weights are a softmax
over the K components of one scalar ``Linear(x)`` each. The head's output is a probability
distribution::

    training:    sum_k pi_k * act(mu_k + sqrt(var_k) * eps_k),   eps_k ~ N(0, 1)
    evaluation:  sum_k pi_k * act(mu_k)

with ``act`` a softmax over the classes (attention: the output sums to 1) or an element-wise
sigmoid (spatial, contacting). The original draws the noise in evaluation too and discards it;
here evaluation draws nothing (same outputs; the random stream is not advanced).

The uncertainty values of a row (``GMMHead.uncertainty``) are the aleatoric part
``sum_k pi_k var_k`` and the epistemic part ``sum_k pi_k (act(mu_k) - sum_j pi_j act(mu_j))^2``.

The K components are computed by one fused ``Linear`` (layout ``[mu_1..mu_K | var_1..var_K |
pi_1..pi_K]``, see :meth:`GMMHead.fused_index`) instead of the original's ``3K`` separate layers:
one matrix product on the hot path; :func:`gmm_state_from_original` converts the original's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

__all__ = ["GMMHead", "gmm_state_from_original"]

Activation = Literal["softmax", "sigmoid"]


class GMMHead(nn.Module):
    """A mixture head returning probabilities.

    Args:
        in_dim: width of the input rows.
        num_classes: classes of the predicate group (3 attention, 6 spatial, 17 contacting).
        k: number of mixture components.
        activation: ``"softmax"`` (attention) or ``"sigmoid"`` (spatial, contacting).

    ``forward(x)`` with ``x`` [N, in_dim] returns [N, num_classes] probabilities: sampled
    components while ``self.training``, the component means otherwise.

    Example::

        head = GMMHead(1936, 3, k=6, activation="softmax").eval()
        p = head(torch.randn(5, 1936))  # rows sum to 1
    """

    def __init__(self, in_dim: int, num_classes: int, k: int, activation: Activation):
        super().__init__()
        if k < 1:
            raise ValueError(f"a mixture head needs k >= 1 components, got {k}")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.k = k
        self.num_classes = num_classes
        self.activation = activation
        self.proj = nn.Linear(in_dim, k * (2 * num_classes + 1))

    def extra_repr(self) -> str:
        return f"k={self.k}, num_classes={self.num_classes}, activation={self.activation!r}"

    def fused_index(self, part: Literal["mu", "var", "pi"], component: int) -> slice:
        """Rows of ``proj`` holding ``part`` of component ``component`` (0-based)."""
        c, k = self.num_classes, self.k
        if part == "mu":
            return slice(component * c, (component + 1) * c)
        if part == "var":
            return slice(k * c + component * c, k * c + (component + 1) * c)
        return slice(2 * k * c + component, 2 * k * c + component + 1)

    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu [N, K, C], var [N, K, C], pi [N, K])`` of the rows ``x``."""
        n, k, c = x.shape[0], self.k, self.num_classes
        z = self.proj(x)
        mu = z[:, : k * c].view(n, k, c)
        var = torch.sigmoid(z[:, k * c : 2 * k * c]).view(n, k, c)
        pi = torch.softmax(z[:, 2 * k * c :], dim=1)
        return mu, var, pi

    def _act(self, logits: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor, from_class: int = 0) -> torch.Tensor:
        """The mixture's probabilities [N, C]; in evaluation with ``from_class``, the mixture of
        ``act(mu_k[:, from_class:])`` [N, C - from_class] (the original's object head leaves
        out the background column in evaluation only; training always covers every class)."""
        mu, var, pi = self.components(x)
        if self.training:
            # one [N, C] draw per component, in the original's order (on the CPU the same
            # numbers as the original under the same seed; it draws on the CPU even on a GPU)
            eps = torch.stack([torch.randn_like(var[:, 0]) for _ in range(self.k)], dim=1)
            mu = mu + torch.sqrt(var) * eps
        else:
            mu = mu[:, :, from_class:]
        return (pi.unsqueeze(-1) * self._act(mu)).sum(dim=1)

    def uncertainty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aleatoric and epistemic uncertainty [N, C] of the rows ``x`` (no sampling)."""
        mu, var, pi = self.components(x)
        weights = pi.unsqueeze(-1)
        act = self._act(mu)
        mean = (weights * act).sum(dim=1, keepdim=True)
        aleatoric = (weights * var).sum(dim=1)
        epistemic = (weights * (act - mean) ** 2).sum(dim=1)
        return aleatoric, epistemic


def gmm_state_from_original(
    original: Mapping[str, torch.Tensor], prefix: str, k: int
) -> dict[str, torch.Tensor]:
    """The fused ``proj.weight``/``proj.bias`` of a head from the original's ``3K`` layers.

    Args:
        original: the original state dict (``<prefix>heads.mu_1.weight``, ``pi_1``, ``var_1``...).
        prefix: the head's key prefix in it, e.g. ``"a_rel_compress."``.
        k: number of components.

    Raises:
        KeyError: a component's key is missing (the message names it).
    """
    parts: dict[str, list[torch.Tensor]] = {"weight": [], "bias": []}
    for part in ("mu", "var", "pi"):
        for i in range(1, k + 1):
            for kind in ("weight", "bias"):
                key = f"{prefix}heads.{part}_{i}.{kind}"
                if key not in original:
                    raise KeyError(key)
                parts[kind].append(original[key])
    return {"proj.weight": torch.cat(parts["weight"]), "proj.bias": torch.cat(parts["bias"])}
