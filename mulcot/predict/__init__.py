"""Offline inference with the exported student: llama.cpp (llama-cpp-python) on the GGUF files, or transformers on
a Hugging Face folder for comparison.

* :mod:`~mulcot.predict.config`: settings, input post and raw generation, shared by both backends;
* :mod:`~mulcot.predict.images`: the image pixels both backends see;
* :mod:`~mulcot.predict.gguf_backend` and :mod:`~mulcot.predict.hf_backend`: the two in-process backends;
* :mod:`~mulcot.predict.server_backend`: a model behind an OpenAI-compatible server (:mod:`mulcot.serving`);
* :mod:`~mulcot.predict.backends`: a backend opened from CLI-style arguments (an export folder, a GGUF, a model);
* :mod:`~mulcot.predict.batch`: one post, or a dataset split stored as chains for ``mulcot eval``.
"""

from mulcot.predict.backends import BACKENDS, find_gguf, open_backend
from mulcot.predict.batch import (
    PROMPT_STAGES,
    BatchSummary,
    PostPrediction,
    predict_dataset,
    predict_post,
)
from mulcot.predict.config import SOURCE_GGUF, SOURCE_HF, SOURCE_SERVER, Generated, Post, PredictConfig
from mulcot.predict.gguf_backend import GGUFBackend
from mulcot.predict.hf_backend import HFBackend
from mulcot.predict.images import image_data_url, prepare_image
from mulcot.predict.server_backend import ServerBackend

__all__ = [
    "BACKENDS",
    "SOURCE_GGUF",
    "SOURCE_HF",
    "SOURCE_SERVER",
    "PROMPT_STAGES",
    "BatchSummary",
    "GGUFBackend",
    "Generated",
    "HFBackend",
    "Post",
    "PostPrediction",
    "PredictConfig",
    "ServerBackend",
    "find_gguf",
    "image_data_url",
    "open_backend",
    "predict_dataset",
    "predict_post",
    "prepare_image",
]
