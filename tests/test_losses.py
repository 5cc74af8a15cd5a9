"""The multi-task loss against a hand computation on fixed logits."""

import math

import torch

from mulcot.train.collator import IGNORE, TASK_CLS, TASK_REA
from mulcot.train.losses import multitask_loss, position_tasks, prediction_mask, target_ce, task_means


def _fixed_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), IGNORE)
    labels[0, 2:4] = torch.tensor([1, 2])  # reasoning: targets at positions 2, 3
    labels[1, 3:5] = torch.tensor([4, 5])  # reasoning
    labels[2, 4] = 6  # classification: one target
    task_ids = torch.tensor([TASK_REA, TASK_REA, TASK_CLS])
    return logits, labels, task_ids


def _nll(logits, row, pos, target):
    """-log softmax(logits[row, pos - 1])[target]: position pos-1 predicts token pos."""
    z = logits[row, pos - 1]
    return -(z[target] - torch.logsumexp(z, 0)).item()


def _loss(logits, labels, task_ids, w_cls, w_rea):
    """The loss as training computes it: logits only at the target-predicting positions."""
    mask = prediction_mask(labels)
    return multitask_loss(logits[mask], labels, mask, task_ids, w_cls, w_rea)


def test_prediction_mask_and_flat_order():
    logits, labels, task_ids = _fixed_batch()
    mask = prediction_mask(labels)
    assert mask.nonzero().tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    assert position_tasks(mask, task_ids).tolist() == [TASK_REA] * 4 + [TASK_CLS]
    ce = target_ce(logits[mask], labels, mask)
    assert math.isclose(ce[0].item(), _nll(logits, 0, 2, 1), rel_tol=1e-6)
    assert math.isclose(ce[-1].item(), _nll(logits, 2, 4, 6), rel_tol=1e-6)
    means = task_means(ce, position_tasks(mask, task_ids))
    assert math.isclose(means[TASK_CLS].item(), ce[-1].item(), rel_tol=1e-6)


def test_weighted_ce_by_hand():
    logits, labels, task_ids = _fixed_batch()
    rea = [_nll(logits, 0, 2, 1), _nll(logits, 0, 3, 2), _nll(logits, 1, 3, 4), _nll(logits, 1, 4, 5)]
    cls = [_nll(logits, 2, 4, 6)]
    expected = 0.2 * sum(cls) / len(cls) + 0.8 * sum(rea) / len(rea)
    loss, parts = _loss(logits, labels, task_ids, 0.2, 0.8)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert math.isclose(parts["ce_cls"], cls[0], rel_tol=1e-6)
    assert math.isclose(parts["ce_rea"], sum(rea) / 4, rel_tol=1e-6)
    loss_11, _ = _loss(logits, labels, task_ids, 0.5, 0.5)
    assert math.isclose(loss_11.item(), 0.5 * cls[0] + 0.5 * sum(rea) / 4, rel_tol=1e-6)


def test_only_target_positions_count():
    logits, labels, task_ids = _fixed_batch()
    before, _ = _loss(logits, labels, task_ids, 0.2, 0.8)
    changed = logits.clone()
    changed[0, 3:] += 100.0  # row 0 predicts its targets from positions 1 and 2 only
    changed[2, :3] -= 50.0  # row 2's single target is predicted from position 3
    after, _ = _loss(changed, labels, task_ids, 0.2, 0.8)
    assert torch.allclose(before, after)


def test_task_without_tokens_contributes_zero():
    logits, labels, task_ids = _fixed_batch()
    only_rea = _loss(logits[:2], labels[:2], task_ids[:2], 0.2, 0.8)[0]
    assert math.isclose(only_rea.item(), 0.8 * _loss(logits, labels, task_ids, 0, 1)[0].item(), rel_tol=1e-6)


def test_kl_full_by_hand_and_vocab_prefix():
    from mulcot.train.losses import kl_full

    zs = torch.tensor([[1.0, 2.0, 0.5, 9.0]])  # student has a padding row (index 3) the assistant lacks
    za = torch.tensor([[0.0, 1.0, 3.0]])
    tau = 2.0
    ps = torch.softmax(zs[0, :3] / tau, 0)
    pa = torch.softmax(za[0] / tau, 0)
    expected = sum(pa[i] * (pa[i].log() - ps[i].log()) for i in range(3)).item()
    assert math.isclose(kl_full(zs, za, tau).item(), expected, rel_tol=1e-6)
    assert kl_full(za, za, tau).abs().item() < 1e-7


def test_kl_topk_by_hand_and_full_equivalence():
    from mulcot.train.losses import kl_full, kl_topk

    torch.manual_seed(1)
    zs, za = torch.randn(2, 4, 11), torch.randn(2, 4, 11)
    lp_a = torch.log_softmax(za, -1)
    # k = V: the cached estimator is the full KL
    ids = torch.arange(11).expand(2, 4, 11)
    assert torch.allclose(kl_topk(zs, ids, lp_a, 2.0), kl_full(zs, za, 2.0), atol=1e-6)
    # k = 3, by hand at one position
    top = lp_a.topk(3, dim=-1)
    got = kl_topk(zs, top.indices, top.values, 1.5)
    i = top.indices[0, 0]
    pa = torch.softmax(top.values[0, 0] / 1.5, 0)
    ps = torch.softmax(zs[0, 0, i] / 1.5, 0)
    assert math.isclose(got[0, 0].item(), (pa * (pa.log() - ps.log())).sum().item(), rel_tol=1e-6)


def test_distill_loss_formula_and_lambda_zero():
    from mulcot.train.losses import distill_loss

    ce = {TASK_CLS: torch.tensor(2.0), TASK_REA: torch.tensor(3.0)}
    kl = {TASK_CLS: torch.tensor(0.5), TASK_REA: torch.tensor(0.25)}
    loss, parts = distill_loss(ce, kl, 0.2, 0.8, 0.3, 2.0)
    assert math.isclose(loss.item(), 0.7 * (0.2 * 2 + 0.8 * 3) + 0.3 * (0.2 * 0.5 + 0.8 * 0.25), rel_tol=1e-6)
    loss_sq, _ = distill_loss(ce, kl, 0.2, 0.8, 0.3, 2.0, tau_squared=True)
    assert math.isclose(loss_sq.item(), 0.7 * 2.8 + 0.3 * 4 * 0.3, rel_tol=1e-6)
    assert distill_loss(ce, kl, 0.2, 0.8, 0.0, 2.0)[0].item() == (0.2 * ce[TASK_CLS] + 0.8 * ce[TASK_REA]).item()
    assert parts["kl_rea"] == 0.25
