"""The one generation interface (mulcot.generation): a new backend is one class and one registration, and then
predict, expand and eval use it like the built-in ones — shown with a toy backend that answers every post with the
same chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from mulcot.core.reasoning import format_reasoning
from mulcot.generation import BACKENDS, Backend, Generated, Post, PredictConfig, Request, open_backend
from mulcot.sample import SAMPLE_NAME

CHAIN = format_reasoning({"Text_analysis": "t", "Image_analysis": "i", "Conflict_resolution": "c",
                          "Final_conclusion": "f", "Prediction": "neutral"})


class ConstantBackend(Backend):
    """A toy backend: every post gets the same answer (the chain, or the label line for P_label)."""

    kind = "constant"
    source = "student-constant"
    name = "constant"

    def __init__(self, config: PredictConfig):
        self.config = config
        self.calls: list[int] = []

    @classmethod
    def open(cls, *, config: PredictConfig, store: Any = None, **_: Any) -> ConstantBackend:
        return cls(config)

    def batch_size(self) -> int:
        return 4

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        self.calls.append(len(posts))
        text = CHAIN if prompt == "cot" else '"Prediction": "neutral"'
        return [Generated(text=text, token_ids=None, tokens_in=None, tokens_out=5, latency_s=0.0) for _ in posts]


@pytest.fixture
def constant(monkeypatch):
    monkeypatch.setitem(BACKENDS, "constant", f"{__name__}:ConstantBackend")
    return open_backend("constant")


def test_a_registered_backend_serves_predict(demo_store, constant):
    from mulcot.predict import predict_dataset

    summary = predict_dataset(demo_store, constant, SAMPLE_NAME, "test", prompts=("cot", "label"))
    assert summary.predicted == 12 and summary.extra_prompts == {"label": 12}
    assert constant.calls == [4, 4, 4, 4, 4, 4]  # batched by the interface, one prompt per batch
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="student-constant", final_only=True)
    assert len(rows) == 24 and {r["prediction"] for r in rows} == {"neutral"}
    again = predict_dataset(demo_store, constant, SAMPLE_NAME, "test", prompts=("cot", "label"))
    assert again.predicted == 0 and again.skipped_done == 12  # resumed: nothing asked twice


def test_run_hands_over_n_answers_per_request_with_their_seeds(constant):
    got: list[tuple[Any, str]] = []
    seeds: list[int] = []
    real = constant.generate

    def generate(posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        seeds.append(constant.config.seed)
        return real(posts, prompt, task)

    constant.generate = generate  # type: ignore[method-assign]
    requests = [Request(post=Post(text=f"post {i}"), prompt="cot", task="msa", n=2, seed=100 + i, tag=i)
                for i in range(3)]
    summary = constant.run(requests, lambda r, g: got.append((r.tag, g.text)))
    assert [tag for tag, _ in got] == [0, 0, 1, 1, 2, 2]  # every request's answers, in order
    assert summary.requests == 3 and summary.answered == 6
    assert seeds == [100, 101]  # the batch's first request seeds it; answer k uses seed + k


def test_an_unknown_backend_is_one_line():
    from mulcot.errors import MulcotError

    with pytest.raises(MulcotError, match="unknown backend 'nope'"):
        open_backend("nope")
