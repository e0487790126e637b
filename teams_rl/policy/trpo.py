"""The math of the classic policy's TRPO training, torch only: the tanh MLP it is built from, generalised advantage
estimates over a rollout, flat gradients, conjugate gradient on a matrix given only as a product, and one TRPO update
(natural-gradient step by CG on the Fisher-vector product, then a backtracking line search within the KL bound)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def mlp(sizes: Sequence[int], out_scale: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    last = layers[-2]
    with torch.no_grad():  # out_scale 0: a zero last layer, so the policy starts exactly uniform
        last.weight.mul_(out_scale)
        last.bias.zero_()
    return nn.Sequential(*layers[:-1])


def gae(rewards, values, dones, last_values, gamma: float, lam: float):
    """Generalised advantage estimates and returns for ``[T, slots]`` tensors; ``dones[t]``: episode ended at t."""
    adv, running = torch.zeros_like(rewards), torch.zeros_like(last_values)
    for t in reversed(range(len(rewards))):
        following = last_values if t == len(rewards) - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * alive - values[t]
        running = delta + gamma * lam * alive * running
        adv[t] = running
    return adv, adv + values


def flat_grad(y, params, **kwargs) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y, params, **kwargs)])


def conjugate_gradient(matvec, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Solve ``A x = b`` with ``iters`` CG steps, ``A`` given only through ``matvec``."""
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        new_rr = r @ r
        if new_rr < 1e-10:
            break
        p, rr = r + (new_rr / rr) * p, new_rr
    return x


def trpo_step(
    policy: nn.Module, obs, actions, adv, *, max_kl: float, damping: float, cg_iters: int
) -> dict[str, float]:
    """One TRPO update: natural-gradient direction by CG on the Fisher-vector product, then a backtracking line
    search that accepts the first step which improves the surrogate and keeps mean KL <= max_kl."""
    params = list(policy.parameters())
    with torch.no_grad():
        old_logp = torch.log_softmax(policy(obs), -1)
    old_taken = old_logp.gather(1, actions[:, None]).squeeze(1)

    def surrogate():
        logp = torch.log_softmax(policy(obs), -1).gather(1, actions[:, None]).squeeze(1)
        return (torch.exp(logp - old_taken) * adv).mean()

    def kl():
        return (old_logp.exp() * (old_logp - torch.log_softmax(policy(obs), -1))).sum(-1).mean()

    g = flat_grad(surrogate(), params)
    entropy = -(old_logp.exp() * old_logp).sum(-1).mean().item()
    if not torch.isfinite(g).all() or g.norm() < 1e-10:  # all advantages equal: nothing to learn
        return {"kl": 0.0, "improvement": 0.0, "step_fraction": 0.0, "entropy": entropy}
    grad_kl = flat_grad(kl(), params, create_graph=True)

    def fisher_vector(v):
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    direction = conjugate_gradient(fisher_vector, g, cg_iters)
    full_step = direction * torch.sqrt(2 * max_kl / (direction @ fisher_vector(direction)).clamp_min(1e-12))
    old_params = parameters_to_vector(params).detach()
    with torch.no_grad():
        before = surrogate().item()
        for k in range(10):
            fraction = 0.5**k
            vector_to_parameters(old_params + fraction * full_step, params)
            improvement, divergence = surrogate().item() - before, kl().item()
            if improvement > 0 and divergence <= max_kl:
                return {"kl": divergence, "improvement": improvement, "step_fraction": fraction, "entropy": entropy}
        vector_to_parameters(old_params, params)
    return {"kl": 0.0, "improvement": 0.0, "step_fraction": 0.0, "entropy": entropy}
