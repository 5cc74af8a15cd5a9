"""The method's losses, each in one short function that mirrors its formula (DESIGN.md §1).

Stage 2 (assistant):  L = λ_cls·CE_cls + λ_rea·CE_rea, CE over target tokens only (labels -100 elsewhere).

Logits are only computed where a loss needs them: at the positions that predict a target token (``prediction_mask``),
passed to the model as ``logits_to_keep``. With Qwen's 152k-token vocabulary the full [batch, seq, vocab] logits
would dominate memory and, for small models, compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mulcot.train.collator import IGNORE, TASK_CLS, TASK_REA


def prediction_mask(labels: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: the positions whose *next* token is a target (the only logits the losses need)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def position_tasks(mask: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """The task of each masked position, flattened in row-major order (as ``logits[mask]``); ``task_ids`` gives one
    task per row, or one per position (a packed batch's rows hold sequences of both tasks)."""
    if task_ids.dim() == 1:
        task_ids = task_ids[:, None].expand_as(mask)
    return task_ids[mask]


def target_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per masked position: ``logits`` are [N, V], one row per True of ``mask`` in row-major order
    (what the model returns with ``logits_to_keep=mask``; ``full_logits[mask]`` gives the same)."""
    targets = labels[:, 1:][mask[:, :-1]]
    return F.cross_entropy(logits.float(), targets, reduction="none")


def task_means(values: torch.Tensor, tasks: torch.Tensor) -> dict[int, torch.Tensor]:
    """Mean of per-position ``values`` over each task's target positions in the batch (0 when a task has none)."""
    out = {}
    for task in (TASK_CLS, TASK_REA):
        m = tasks == task
        out[task] = (values * m).sum() / m.sum().clamp(min=1)
    return out


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor,
                   w_cls: float, w_rea: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L = λ_cls·CE_cls + λ_rea·CE_rea over one batch that holds both tasks' sequences (logits at ``mask``)."""
    parts = task_means(target_ce(logits, labels, mask), position_tasks(mask, task_ids))
    loss = w_cls * parts[TASK_CLS] + w_rea * parts[TASK_REA]
    return loss, {"ce_cls": float(parts[TASK_CLS].detach()), "ce_rea": float(parts[TASK_REA].detach())}


# Stage 4 (student):  L = (1−λ)·(λ_cls·CE_cls + λ_rea·CE_rea) + λ·(λ_cls·KL_cls + λ_rea·KL_rea),
# KL(p_a ‖ p_s) between temperature-softened next-token distributions p = softmax(z/τ), at target positions only.


def kl_full(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(p_a ‖ p_s) per position over the common vocabulary prefix: [..., V_s], [..., V_a] -> [...]."""
    v = min(student_logits.size(-1), teacher_logits.size(-1))
    log_ps = F.log_softmax(student_logits[..., :v].float() / tau, dim=-1)
    log_pa = F.log_softmax(teacher_logits[..., :v].float() / tau, dim=-1)
    return (log_pa.exp() * (log_pa - log_ps)).sum(-1)


def kl_topk(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
            tau: float) -> torch.Tensor:
    """KL over the assistant's cached top-k ids per position, both sides renormalised over those k ids:
    p_a,k = softmax(log p_a[ids] / τ), p_s,k = softmax(z_s[ids] / τ), KL = Σ_k p_a,k (log p_a,k − log p_s,k).
    (Shifting log-probs by a constant does not change a softmax, so τ=1 log-probs serve every τ.) With k equal
    to the vocabulary size this is exactly :func:`kl_full`."""
    z_s = torch.gather(student_logits.float(), -1, topk_ids.long())
    log_ps = F.log_softmax(z_s / tau, dim=-1)
    log_pa = F.log_softmax(topk_logprobs.float() / tau, dim=-1)
    return (log_pa.exp() * (log_pa - log_ps)).sum(-1)


def distill_loss(
    ce_parts: dict[int, torch.Tensor],
    kl_parts: dict[int, torch.Tensor],
    w_cls: float,
    w_rea: float,
    lam: float,
    tau: float,
    tau_squared: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = (1−λ)·L_hard + λ·L_soft with L_hard = λ_cls·CE_cls + λ_rea·CE_rea and L_soft = λ_cls·KL_cls + λ_rea·KL_rea
    (times τ² when ``tau_squared``, Hinton et al.'s gradient-scale correction)."""
    hard = w_cls * ce_parts[TASK_CLS] + w_rea * ce_parts[TASK_REA]
    soft = w_cls * kl_parts[TASK_CLS] + w_rea * kl_parts[TASK_REA]
    if tau_squared:
        soft = soft * tau * tau
    loss = (1 - lam) * hard + lam * soft
    parts = {"ce_cls": ce_parts[TASK_CLS], "ce_rea": ce_parts[TASK_REA], "kl_cls": kl_parts[TASK_CLS],
             "kl_rea": kl_parts[TASK_REA]}
    return loss, {k: float(v.detach()) for k, v in parts.items()}
