"""The interface every few-shot generative model in varmem implements.

Trainer, evaluation and Ray workers talk to models only through this interface, so that VMA,
the VAE baseline and the soft-attention baseline are interchangeable in configs.

Shapes: ``G`` episodes, ``M`` memory entries, ``T`` targets per episode, ``K`` posterior
samples, images ``[1, H, W]`` with values in [0, 1] (binarized or grey; the Bernoulli
likelihood takes grey values as targets, as is usual for Omniglot at 28×28).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Objective:
    """A training objective and its parts, per target, in nats."""

    loss: torch.Tensor  # scalar to minimize (the negative surrogate, mean over G·T targets)
    bound: torch.Tensor  # [G, T] K-sample bound on log p(x|M) (VMA eq. 7)
    reconstruction: torch.Tensor  # [G, T] E_q log p(x|z, a)
    kl_address: torch.Tensor  # [G, T] KL(q(a|x) || p(a)); zeros for models without an address
    kl_latent: torch.Tensor  # [G, T] E_q(a|x) KL(q(z|a, x) || p(z|a))

    def metrics(self) -> dict[str, float]:
        """Means over targets, as plain floats, for logging."""
        return {
            "loss": float(self.loss.detach()),
            "bound": float(self.bound.detach().mean()),
            "nll_bound": float(-self.bound.detach().mean()),
            "reconstruction": float(self.reconstruction.detach().mean()),
            "kl_address": float(self.kl_address.detach().mean()),
            "kl_latent": float(self.kl_latent.detach().mean()),
        }


class FewShotGenerativeModel(nn.Module):
    """p(x | M): a generative model of targets conditioned on a memory of examples."""

    uses_memory: bool = True  # False for the unconditioned VAE (memory is ignored)
    has_address: bool = False  # True when the model has a discrete address a over memory entries

    def objective(self, memory: torch.Tensor, targets: torch.Tensor, num_samples: int) -> Objective:
        """Training objective with ``num_samples`` posterior samples per target.

        memory [G, M, 1, H, W], targets [G, T, 1, H, W].
        """
        raise NotImplementedError

    def log_likelihood(self, memory: torch.Tensor, targets: torch.Tensor, num_samples: int, chunk: int = 100) -> torch.Tensor:
        """Importance-sampled bound log (1/K) Σ_k w_k on log p(x|M), [G, T], in nats.

        Samples are drawn ``chunk`` at a time and merged with a running log-sum-exp, so that
        memory stays bounded whatever ``num_samples`` is (1,000 to 5,000 in evaluation).
        """
        raise NotImplementedError

    def address_log_posterior(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log q(a | x, M) over memory entries, [G, T, M] (models with ``has_address``)."""
        raise NotImplementedError(f"{type(self).__name__} has no address posterior")

    def sample(self, memory: torch.Tensor, num: int) -> torch.Tensor:
        """``num`` samples from p(x | M) per episode, as Bernoulli means: [G, num, 1, H, W]."""
        raise NotImplementedError
