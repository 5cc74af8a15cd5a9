"""One resolver for trained adapters (mulcot.core.refs), as expand, distill, eval, export and predict see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mulcot.core.refs import adapter_digest, resolve_run
from mulcot.errors import ModelError, NotFoundError
from mulcot.evaluate import resolve_model


def _adapter(folder: Path, base: str = "/models/base", weights: bytes = b"w1", meta: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    if meta is not None:
        (folder / "mulcot.json").write_text(json.dumps(meta))
    return folder


def test_every_way_of_naming_a_run(tmp_path: Path, store) -> None:
    runs = tmp_path / "runs"
    adapter = _adapter(runs / "stu" / "adapter", meta={"run": "stu", "base": "/models/trained-on"})
    store.create_run("stu", kind="distill", output_dir=str(runs / "stu"))
    for ref in (runs / "stu", adapter, "stu"):
        got = resolve_run(store, ref)
        assert (got.run_id, got.kind, got.folder, got.adapter) == ("stu", "distill", runs / "stu", adapter)
        assert got.base_model == "/models/trained-on"  # mulcot.json's base wins over adapter_config.json's
    # a name not in the store, found under runs_dir; and the base from adapter_config.json without mulcot.json
    _adapter(runs / "other" / "adapter")
    got = resolve_run(store, "other", runs)
    assert (got.run_id, got.kind, got.base_model) == ("other", None, "/models/base")
    # a best/ checkpoint is an adapter of its run
    best = _adapter(runs / "stu" / "best", meta={"run": "stu", "base": "/b"})
    assert resolve_run(store, best).folder == runs / "stu"


def test_an_adapter_outside_any_run_is_named_after_itself(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "home" / "my-lora")
    got = resolve_run(None, adapter)
    assert (got.run_id, got.folder, got.kind) == ("my-lora", None, None)


def test_unfinished_gone_and_foreign_folders_say_what_is_wrong(tmp_path: Path, store) -> None:
    runs = tmp_path / "runs"
    _adapter(runs / "half" / "best")
    with pytest.raises(NotFoundError, match="has not finished.*--resume"):
        resolve_run(store, runs / "half")
    store.create_run("gone", kind="assistant", output_dir=str(runs / "gone"))
    with pytest.raises(NotFoundError, match="'gone' is in the store but its folder .* is gone"):
        resolve_run(store, "gone")
    store.create_run("running", kind="assistant", output_dir=str(runs / "running"))
    (runs / "running").mkdir()
    with pytest.raises(NotFoundError, match=r"\(assistant, .*\) has not finished"):
        resolve_run(store, "running")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="holds no LoRA adapter"):
        resolve_run(store, tmp_path / "empty")
    with pytest.raises(NotFoundError, match="no run folder, adapter folder or run named 'nope'"):
        resolve_run(store, "nope")
    nobase = tmp_path / "nobase"
    nobase.mkdir()
    (nobase / "adapter_config.json").write_text("{}")
    with pytest.raises(NotFoundError, match="which base model"):
        resolve_run(None, nobase)


def test_eval_sees_runs_through_the_same_resolver(tmp_path: Path, store) -> None:
    runs = tmp_path / "runs"
    adapter = _adapter(runs / "asst" / "adapter", meta={"run": "asst", "base": "/models/base"})
    store.create_run("asst", kind="train-assistant", output_dir=str(runs / "asst"))
    for spec in (str(runs / "asst"), str(adapter), "asst"):
        subject = resolve_model(store, spec, runs)
        assert (subject.name, subject.source, subject.run_id, subject.model) == ("asst", "assistant", "asst",
                                                                                 "/models/base")
        assert subject.folder == str(runs / "asst") and subject.adapter_sha256 == adapter_digest(adapter)
    with pytest.raises(NotFoundError, match="has not finished"):
        _adapter(runs / "half" / "best")
        resolve_model(store, str(runs / "half"), runs)


def test_adapter_digest_follows_the_weights(tmp_path: Path) -> None:
    a = _adapter(tmp_path / "a", weights=b"one")
    b = _adapter(tmp_path / "b", weights=b"one")
    c = _adapter(tmp_path / "c", weights=b"two")
    assert adapter_digest(a) == adapter_digest(b) != adapter_digest(c)
    (c / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="no adapter weights"):
        adapter_digest(c)
