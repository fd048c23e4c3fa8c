"""A mixture-of-experts MLP with a sparse dispatch (Mixtral; DeepSeek-style shared experts).

A router scores each token against every expert; the token goes to its top-k experts only, and
their outputs come back weighted by the renormalised router probabilities. Each expert runs on
the tokens routed to it and no others: the routed work is top_k MLPs per token however many
experts there are. The layer keeps the load-balancing loss of its last forward in `aux_loss`
(and its coefficient in the objective in `aux_weight`); `moe_aux_loss(model)` averages them over
the model's MoE layers, and the train stage adds the weighted mean to its loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import FeedForward

__all__ = ["MixtureOfExperts", "load_balancing_loss", "moe_aux_loss", "moe_layers"]


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor, experts: int) -> torch.Tensor:
    """Switch's loss, experts x sum_i f_i P_i: f_i the share of tokens routed to expert i (over
    all k slots, as transformers' Mixtral counts it, so perfect balance gives top_k), P_i the
    mean router probability of expert i. probs: (N, experts) float; chosen: (N, k) indices."""
    f = torch.zeros(experts, device=probs.device, dtype=probs.dtype)
    f.index_add_(0, chosen.reshape(-1), torch.ones(chosen.numel(), device=probs.device, dtype=probs.dtype))
    return experts * (f / probs.shape[0] * probs.mean(0)).sum()


class MixtureOfExperts(nn.Module):
    def __init__(
        self,
        *,
        router: nn.Linear,
        experts: list[FeedForward],
        top_k: int,
        shared: FeedForward | None = None,
        router_jitter: float = 0.0,
        aux_weight: float = 0.0,  # the coefficient of the load-balancing loss in the objective
    ):
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k ({top_k}) must be between 1 and the number of experts ({len(experts)})")
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.shared = shared
        self.top_k = top_k
        self.router_jitter = router_jitter
        self.aux_weight = aux_weight
        self.aux_loss: torch.Tensor | None = None  # of the last forward; see moe_aux_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        if self.training and self.router_jitter > 0:  # as Mixtral: the experts see the noisy input too
            x = x * torch.empty_like(x).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
        h = x.reshape(-1, d)  # (N, d)
        probs = torch.softmax(self.router(h).float(), dim=-1)  # (N, E)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(h.dtype)
        self.aux_loss = load_balancing_loss(probs, chosen, len(self.experts))

        # sort the N x k (token, expert) pairs by expert: each expert reads one contiguous run
        order = chosen.reshape(-1).argsort(stable=True)  # (N k,)
        counts = _even(chosen.numel(), len(self.experts)) if h.is_meta else \
            torch.bincount(chosen.reshape(-1), minlength=len(self.experts)).tolist()
        out = torch.zeros_like(h)
        start = 0
        for expert, n in zip(self.experts, counts):
            # an expert no token reaches still runs, on none: its parameters then get (zero)
            # gradients, which DDP waits for on every rank, and autocast casts them as it does the others
            pairs = order[start:start + n]
            start += n
            tokens = pairs // self.top_k
            y = expert(h[tokens]) * weights.reshape(-1)[pairs, None]  # (n, d)
            out.index_add_(0, tokens, y)
        if self.shared is not None:
            out = out + self.shared(h)
        return out.reshape(B, T, d)


def _even(pairs: int, experts: int) -> list[int]:
    """On the meta device there are no router scores to route by: the pairs are spread evenly
    (uniform routing), which gives the exact FLOPs of any routing, top_k experts per token."""
    return [pairs // experts + (e < pairs % experts) for e in range(experts)]


def moe_layers(model: nn.Module) -> list[MixtureOfExperts]:
    return [m for m in model.modules() if isinstance(m, MixtureOfExperts)]


def moe_aux_loss(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The load-balancing loss of the model's last forward, averaged over its MoE layers: the
    term the objective adds (each layer's loss times its `aux_weight`) and the loss itself;
    None for a model without any. Padding positions are routed and counted like real tokens."""
    layers = [m for m in moe_layers(model) if m.aux_loss is not None]
    if not layers:
        return None
    losses = torch.stack([m.aux_loss for m in layers])
    weights = torch.tensor([m.aux_weight for m in layers], device=losses.device, dtype=losses.dtype)
    return (weights * losses).mean(), losses.mean()
