"""The learning rate of a training run: a linear warm-up, then the paper's halving on a dev-accuracy plateau.

Without a dev split the Trainer's own ``constant_with_warmup`` schedule does it (:func:`mulcot.train.loop.
training_arguments`). With one, the Trainer's ``reduce_lr_on_plateau`` ignores ``warmup_steps``; :class:`WarmupPlateau`
takes its place: the Trainer steps it after every optimizer step (the warm-up ramp, as
``get_constant_schedule_with_warmup``: lr·step/warmup, so the first step runs at 0) and
:meth:`WarmupPlateau.plateau_step` gets the dev metric after every evaluation. torch's ``ReduceLROnPlateau`` takes
the halving decisions, on a shadow optimizer holding the post-warm-up learning rates, and only from evaluations made
once the warm-up is over (an epoch still warming up is no plateau).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau


class WarmupPlateau(LambdaLR):
    """lr = plateau lr × min(1, step / warmup_steps), per parameter group."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, **plateau: Any):
        self.warmup_steps = max(0, int(warmup_steps))
        # one shadow group per real group, at the real group's starting lr: the plateau halves these
        bases = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        shadow = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in bases])
        self.plateau = ReduceLROnPlateau(shadow, **plateau)
        lambdas = [self._factor(i, lr) for i, lr in enumerate(bases)]
        super().__init__(optimizer, lambdas)

    def _factor(self, index: int, base: float) -> Any:
        def factor(step: int) -> float:
            warm = 1.0 if step >= self.warmup_steps else step / self.warmup_steps
            plateau_lr = self.plateau.optimizer.param_groups[index]["lr"]
            return warm * (plateau_lr / base if base else 1.0)

        return factor

    def plateau_step(self, metric: float, step: int) -> None:
        """After an evaluation at optimizer step ``step``: let the plateau logic see ``metric`` (once the warm-up
        is over) and apply its learning rate from the next step on."""
        if step < self.warmup_steps:
            return
        self.plateau.step(metric)
        for group, lr in zip(self.optimizer.param_groups, self._current(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _current(self) -> list[float]:
        return [base * f(self.last_epoch) for base, f in zip(self.base_lrs, self.lr_lambdas, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        """Plain data only (the Trainer reloads it with ``weights_only=True``)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas", "plateau")}
        state["plateau"] = self.plateau.state_dict()
        state["plateau_lrs"] = [group["lr"] for group in self.plateau.optimizer.param_groups]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        plateau, lrs = state.pop("plateau"), state.pop("plateau_lrs")
        self.__dict__.update(state)
        self.plateau.load_state_dict(plateau)
        for group, lr in zip(self.plateau.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr


def plateau_metric(metrics: dict[str, float], name: str) -> float | None:
    """The metric the plateau watches (``eval_<name>``), if this evaluation has it."""
    key = name if name.startswith("eval_") else f"eval_{name}"
    return metrics.get(key)
