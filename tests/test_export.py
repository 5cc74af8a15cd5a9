"""export (merge → GGUF + mmproj → quantize → manifest/Modelfile) and predict (llama.cpp / transformers), CPU.

Tiny random-weight students on the real Qwen2 vocabulary (GGUF-convertible), each with a LoRA adapter whose B
matrices are random and non-zero, so the merge changes the outputs. Exports are built once per session.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from conftest import dump
from PIL import Image
from typer.testing import CliRunner

from mulcot.core import llamacpp
from mulcot.core.gguf import MANIFEST, QUANT_TYPES, check_gguf, gguf_names, inspect_gguf, parse_quants
from mulcot.core.prompts import get_prompt
from mulcot.core.refs import resolve_source, sha256_file
from mulcot.errors import ExportError, ModelError, MulcotError, NotFoundError
from mulcot.events import Event
from mulcot.export import ExportConfig, export, modelfile_text
from mulcot.store import Store

FAMILIES = ("qwen2.5-vl", "qwen3-vl")
# Image sides both runtimes keep as they are (multiples of patch x merge: 28 / 32, above mtmd's and transformers'
# minimum pixels), so llama.cpp and transformers see the same pixels and the same number of image tokens.
SIDE = {"qwen2.5-vl": 224, "qwen3-vl": 256}
N_TOKENS = 10
POST = ("RT @user: what a night for $T$ , the crowd went wild", "Messi")


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def converter() -> Path:
    """llama.cpp's converter and the Qwen2 vocabulary (pip-downloads the sdist once), else skip."""
    pytest.importorskip("llama_cpp")
    try:
        llamacpp.qwen2_vocab_path()
        return llamacpp.converter_script()
    except MulcotError as err:
        pytest.skip(f"llama.cpp's converter is unavailable (pip/network?): {err}")


def _make_student(root: Path, family: str) -> Path:
    """A tiny base model and a run folder ``student-<family>/adapter`` (LoRA B random: the merge matters)."""
    from peft import LoraConfig, get_peft_model

    from mulcot.models import build_tiny, load_model
    from mulcot.train.config import LANGUAGE_ONLY

    base = build_tiny(root / "base", family, seed=0)
    model, processor, _ = load_model(base)
    with torch.random.fork_rng():  # lora_A is drawn from the global RNG: the same adapter every session
        torch.manual_seed(7)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LANGUAGE_ONLY)
        peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    run = root / f"student-{family}"
    adapter = run / "adapter"
    peft_model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    (adapter / "mulcot.json").write_text(json.dumps({"run": run.name, "base": str(base)}))
    return run


@pytest.fixture(scope="session")
def student(tmp_path_factory: pytest.TempPathFactory, converter: Path) -> Callable[[str], Path]:
    """``student(family)``: a run folder with a trained-looking adapter on a tiny base, built once."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = _make_student(tmp_path_factory.mktemp(f"student-{family}"), family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, student: Callable[[str], Path]) -> Callable[[str], Any]:
    """``exported(family)``: the ExportResult of a full export (f16 + mmproj, Q8_0 and Q4_K_M), built once."""
    done: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in done:
            out = tmp_path_factory.mktemp(f"export-{family}") / "out"
            done[family] = export(ExportConfig(source=str(student(family)), out=str(out), quants=("q8_0", "q4_k_m")))
        return done[family]

    return get


@pytest.fixture(scope="session")
def hf_models(student: Callable[[str], Path], exported: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    """``hf_models(family)``: {"merged": (model, processor), "adapter": base+adapter model, "base": base model}."""
    from mulcot.models import load_model, load_with_adapter, model_class, processor_class

    loaded: dict[str, dict[str, Any]] = {}

    def get(family: str) -> dict[str, Any]:
        if family not in loaded:
            hf = exported(family).hf_dir  # loaded by from_pretrained alone (no mulcot loader, no peft)
            merged = model_class(family).from_pretrained(hf).eval()
            processor = processor_class(family).from_pretrained(hf)
            base, _, _ = load_model(student(family).parent / "base")
            with_adapter = load_with_adapter(base, student(family) / "adapter")
            loaded[family] = {"merged": merged, "processor": processor, "adapter": with_adapter}
        return loaded[family]

    return get


def _image(side: int) -> Image.Image:
    img = Image.new("RGB", (side, side))
    img.putdata([((x * 4) % 256, (y * 5) % 256, (x * y) % 256) for y in range(side) for x in range(side)])
    return img


def _hf_inputs(processor: Any, prompt: str, image: Image.Image | None) -> Any:
    from mulcot.core.inputs import user_message

    text = processor.apply_chat_template([user_message(prompt, image is not None)], add_generation_prompt=True,
                                         tokenize=False)
    return processor(text=[text], images=[image] if image is not None else None, return_tensors="pt")


def _hf_greedy(model: Any, processor: Any, prompt: str, image: Image.Image | None, n: int) -> list[int]:
    inputs = _hf_inputs(processor, prompt, image)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def _cli() -> typer.Typer:
    """The two commands under mulcot's root group (one-line errors), as `mulcot` registers them."""
    from mulcot.cli import MulcotGroup
    from mulcot.cli.export import export as export_cmd
    from mulcot.cli.predict import predict as predict_cmd

    app = typer.Typer(cls=MulcotGroup, pretty_exceptions_enable=False)
    app.command("export")(export_cmd)
    app.command("predict")(predict_cmd)
    return app


# ------------------------------------------------------------------------------------------ fast unit tests


def test_quant_types_and_names() -> None:
    import llama_cpp

    assert QUANT_TYPES["q8_0"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0 == 7
    assert QUANT_TYPES["q4_k_m"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M == 15
    assert parse_quants("Q8_0, q4-k-m,q8_0") == ("q8_0", "q4_k_m")
    assert parse_quants("none") == () and parse_quants("") == ()
    with pytest.raises(MulcotError, match="unknown quantization type 'q3'"):
        parse_quants("q3")
    assert gguf_names("s", "f16", ("q4_k_m",)) == {"text": "s-F16.gguf", "mmproj": "mmproj-s-F16.gguf",
                                                   "q4_k_m": "s-Q4_K_M.gguf"}
    assert gguf_names("s", "f32", ())["mmproj"] == "mmproj-s-F32.gguf"


def test_modelfile_for_ollama() -> None:
    text = modelfile_text("qwen2.5-vl", "s-Q4_K_M.gguf", "mmproj-s-F16.gguf", name="s")
    lines = text.splitlines()
    assert [x for x in lines if x.startswith("FROM ")] == ["FROM ./s-Q4_K_M.gguf", "FROM ./mmproj-s-F16.gguf"]
    assert 'PARAMETER stop "<|im_end|>"' in lines and "PARAMETER temperature 0" in lines
    assert 'SYSTEM """You are a helpful assistant."""' in lines  # what Qwen2.5-VL's template adds by default
    assert "<|im_start|>assistant\n" in text and "{{ .Content }}<|im_end|>" in text
    qwen3 = modelfile_text("qwen3-vl", "s-F16.gguf", None, name="s")
    assert "SYSTEM" not in qwen3 and qwen3.count("FROM ") == 1


def test_source_resolution(tmp_path: Path, store: Any) -> None:
    run = tmp_path / "runs" / "stu"
    adapter = run / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    (run / "config.json").write_text("{}")  # a run folder holds its TrainConfig as config.json
    as_run = resolve_source(run)
    assert (as_run.kind, as_run.adapter, as_run.base_model, as_run.run_id) == ("run", adapter, "/models/base", "stu")
    as_adapter = resolve_source(adapter)
    assert as_adapter.kind == "adapter" and as_adapter.adapter == adapter
    assert resolve_source(run, base_model="/other").base_model == "/other"
    store.create_run("stu", kind="distill", output_dir=str(run))
    assert resolve_source("stu", store).adapter == adapter
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert resolve_source(model).kind == "model"
    with pytest.raises(NotFoundError):
        resolve_source("no-such-run", store)


def test_export_refuses_a_foreign_out_folder(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MulcotError, match="not a mulcot export folder"):
        export(ExportConfig(source=str(adapter), out=str(out)))
    assert (out / "notes.txt").read_text() == "mine"


def test_gguf_checks_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"vision projector \(mmproj\) GGUF not found"):
        check_gguf(tmp_path / "mmproj.gguf", "mmproj")
    with pytest.raises(NotFoundError, match="text model GGUF not found"):
        check_gguf(tmp_path / "model.gguf", "text")
    (tmp_path / "junk.gguf").write_bytes(b"\x89PNG" + b"\0" * 100)
    with pytest.raises(ModelError, match="not a GGUF file"):
        check_gguf(tmp_path / "junk.gguf", "mmproj")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\xff" * 100)
    with pytest.raises(ModelError, match="corrupt GGUF"):
        check_gguf(tmp_path / "bad.gguf", "mmproj")


# ----------------------------------------------------------------------------------------------- exports


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_export_writes_every_file(family: str, exported: Callable[[str], Any], student: Callable[[str], Path]) -> None:
    result = exported(family)
    out = Path(result.out)
    assert result.family == family and result.source_kind == "run" and result.run_id == f"student-{family}"
    assert [(s.step, s.status) for s in result.steps] == [
        ("merge", "done"), ("convert-text", "done"), ("convert-mmproj", "done"), ("quantize-q8_0", "done"),
        ("quantize-q4_k_m", "done"), ("manifest", "done"),
    ]
    hf = Path(result.hf_dir)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
                 "preprocessor_config.json"):
        assert (hf / name).is_file(), name
    text, mmproj = inspect_gguf(result.text_gguf), inspect_gguf(result.mmproj_gguf)
    assert text["architecture"] == ("qwen2vl" if family == "qwen2.5-vl" else "qwen3vl")
    assert text["file_type"] == 1 and text["name"] == f"student-{family}"
    assert mmproj["type"] == "mmproj" and mmproj["projector_type"]
    for q, path in result.quantized.items():
        assert inspect_gguf(path)["file_type"] == QUANT_TYPES[q]
    assert Path(result.default_gguf).name == f"student-{family}-Q4_K_M.gguf"

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source"]["run"] == f"student-{family}"
    assert manifest["base_model"] == str(student(family).parent / "base")
    assert manifest["quant_types"] == ["q8_0", "q4_k_m"] and manifest["family"] == family
    assert manifest["versions"]["llama-cpp-python"] == manifest["llama_cpp_python"] == llamacpp.installed_version()
    assert manifest["versions"]["mulcot"] and manifest["converter"].endswith("convert_hf_to_gguf.py")
    assert manifest["prompts"]["cot"]["masc"] == get_prompt("cot", "masc").version
    roles = {f["path"]: f for f in manifest["files"]}
    for rel in (Path(result.text_gguf).name, Path(result.mmproj_gguf).name, "Modelfile", "hf/model.safetensors"):
        entry = roles[rel]
        assert entry["bytes"] == (out / rel).stat().st_size and entry["sha256"] == sha256_file(out / rel)
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./student-{family}-Q4_K_M.gguf" in modelfile
    assert f"FROM ./{Path(result.mmproj_gguf).name}" in modelfile


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_merged_folder_reloads_alone_and_matches_base_plus_adapter(
    family: str, exported: Callable[[str], Any], hf_models: Callable[[str], dict[str, Any]]
) -> None:
    models = hf_models(family)
    alone, processor = models["merged"], models["processor"]
    prompt = get_prompt("cot", "masc").render(*POST)
    inputs = _hf_inputs(processor, prompt, _image(SIDE[family]))
    with torch.no_grad():
        merged_logits = alone(**inputs).logits
        adapter_logits = models["adapter"](**inputs).logits
        with models["adapter"].disable_adapter():
            base_logits = models["adapter"](**inputs).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4), (merged_logits - adapter_logits).abs().max()
    assert (merged_logits - base_logits).abs().max() > 1e-2  # the adapter matters
    ids = _hf_greedy(alone, processor, prompt, _image(SIDE[family]), N_TOKENS)
    assert ids == _hf_greedy(models["adapter"], processor, prompt, _image(SIDE[family]), N_TOKENS)


@pytest.mark.slow
@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_and_transformers_give_the_same_first_tokens(
    family: str, with_image: bool, exported: Callable[[str], Any], hf_models: Callable[[str], dict[str, Any]]
) -> None:
    """Greedy decoding, same prompt and same image pixels: the f16 GGUF (+ mmproj, through MTMDChatHandler and
    the GGUF's own chat template) gives the same first 10 token ids as the merged transformers model."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from mulcot.generation import GGUFBackend, PredictConfig

    result = exported(family)
    models = hf_models(family)
    prompt = get_prompt("cot", "masc").render(*POST)
    image = _image(SIDE[family]) if with_image else None
    expected = _hf_greedy(models["merged"], models["processor"], prompt, image, N_TOKENS)
    tok = models["processor"].tokenizer
    # random weights may pick special tokens or the output layer's padding rows (ids past the tokenizer): bytes
    # are compared over the ordinary tokens
    plain = [i for i in expected if i < len(tok) and i not in tok.all_special_ids]
    with GGUFBackend(result.text_gguf, result.mmproj_gguf, PredictConfig(max_tokens=N_TOKENS, n_threads=1)) as gg:
        got = gg.generate_one(prompt, image)
        raw_bytes = gg.token_bytes(plain)
    assert got.token_ids == expected
    assert got.tokens_out == N_TOKENS and got.finish_reason == "length"
    # the same bytes: transformers' byte-level tokens mapped back to bytes
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    hf_bytes = b"".join(bytes(byte_of[c] for c in tok.convert_ids_to_tokens(i)) for i in plain)
    assert raw_bytes == hf_bytes


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_files_load_and_generate(family: str, exported: Callable[[str], Any]) -> None:
    from mulcot.generation import GGUFBackend, PredictConfig

    result = exported(family)
    prompt = get_prompt("cot", "masc").render(*POST)
    for q in ("q8_0", "q4_k_m"):
        path = result.quantized[q]
        assert Path(path).stat().st_size < Path(result.text_gguf).stat().st_size
        with GGUFBackend(path, result.mmproj_gguf, PredictConfig(max_tokens=5, n_threads=1, ignore_eos=True)) as gg:
            assert gg.info["file_type"] == QUANT_TYPES[q]
            got = gg.generate_one(prompt, _image(SIDE[family]))
        assert got.tokens_out == 5 and len(got.token_ids) == 5
        # --no-mmap reads the file instead of mapping it: the same model, the same greedy tokens
        config = PredictConfig(max_tokens=5, n_threads=1, ignore_eos=True, mmap=False)
        with GGUFBackend(path, result.mmproj_gguf, config) as gg:
            assert gg.generate_one(prompt, _image(SIDE[family])).token_ids == got.token_ids


@pytest.mark.slow
def test_rerun_resumes_and_a_failed_step_is_named(
    tmp_path: Path, exported: Callable[[str], Any], student: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    family = "qwen2.5-vl"
    done = exported(family)
    # 1. a finished export: every step is skipped, nothing changes
    before = {p.name: p.stat().st_mtime_ns for p in Path(done.out).glob("*.gguf")}
    again = export(ExportConfig(source=str(student(family)), out=done.out, quants=("q8_0", "q4_k_m")))
    assert [s.status for s in again.steps] == ["skipped"] * 5 + ["done"]
    assert {p.name: p.stat().st_mtime_ns for p in Path(done.out).glob("*.gguf")} == before

    # 2. a converter that fails: the error names the step, the merged folder stays
    fake = tmp_path / "llama.cpp"
    (fake / "gguf-py").mkdir(parents=True)
    (fake / "convert_hf_to_gguf.py").write_text(
        "import os, shutil, sys\n"
        "if os.environ.get('FAKE_FAIL'):\n"
        "    print('INFO: loading'); print('ValueError: boom in the converter', file=sys.stderr); sys.exit(1)\n"
        "out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "shutil.copy(os.environ['FAKE_MMPROJ' if '--mmproj' in sys.argv else 'FAKE_TEXT'], out)\n"
    )
    monkeypatch.setenv("FAKE_FAIL", "1")
    monkeypatch.setenv("FAKE_TEXT", done.text_gguf)
    monkeypatch.setenv("FAKE_MMPROJ", done.mmproj_gguf)
    out = tmp_path / "out"
    config = ExportConfig(source=str(student(family)), out=str(out), quants=("q4_k_m",), llama_cpp_dir=str(fake))
    with pytest.raises(ExportError) as err:
        export(config)
    assert err.value.step == "convert-text" and "boom in the converter" in str(err.value)
    assert "\n" not in str(err.value) and "logs/convert-text.log" in str(err.value)
    assert (out / "hf" / "model.safetensors").is_file() and not list(out.glob("*.gguf"))

    # 3. the rerun resumes: no second merge, then convert, quantize and manifest
    monkeypatch.delenv("FAKE_FAIL")
    events: list[Event] = []
    resumed = export(config, progress=events.append)
    assert [(s.step, s.status) for s in resumed.steps] == [
        ("merge", "skipped"), ("convert-text", "done"), ("convert-mmproj", "done"), ("quantize-q4_k_m", "done"),
        ("manifest", "done"),
    ]
    assert {e.step for e in events if e.status == "start"} == {"convert-text", "convert-mmproj", "quantize-q4_k_m",
                                                                "manifest"}
    assert inspect_gguf(out / "student-qwen2.5-vl-Q4_K_M.gguf")["file_type"] == QUANT_TYPES["q4_k_m"]


# ------------------------------------------------------------------------------------------------ predict


@pytest.mark.slow
def test_corrupt_or_missing_mmproj_is_one_clear_line(tmp_path: Path, exported: Callable[[str], Any]) -> None:
    result = exported("qwen2.5-vl")
    image = tmp_path / "post.png"
    _image(224).save(image)
    alone = tmp_path / "alone"
    alone.mkdir()
    text = alone / "student.gguf"
    shutil.copy(result.text_gguf, text)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(_cli(), ["predict", *args, "--image", str(image), "--text", "a post", "--max-tokens", "4",
                                      "--n-threads", "1"])

    def one_line_error(r: Any, *needles: str) -> None:
        assert r.exit_code != 0, r.output
        assert "Traceback" not in r.output and r.output.count("error:") == 1, r.output
        line = next(x for x in r.output.splitlines() if x.startswith("error:"))
        for needle in needles:
            assert needle in " ".join(r.output.split()), (needle, r.output)
        assert line

    one_line_error(run("--gguf", str(text)), "no vision projector (mmproj)")  # missing
    (alone / "mmproj-student.gguf").write_bytes(Path(result.mmproj_gguf).read_bytes()[:5000])
    one_line_error(run("--gguf", str(text)), "corrupt GGUF", "mmproj-student.gguf")  # truncated
    (alone / "mmproj-student.gguf").write_bytes(b"not a gguf at all")
    one_line_error(run("--gguf", str(text)), "not a GGUF file")
    one_line_error(run("--gguf", str(text), "--mmproj", result.quantized["q8_0"]), "not a vision projector")
    one_line_error(run("--gguf", str(text), "--mmproj", str(tmp_path / "gone.gguf")), "not found", "gone.gguf")
    one_line_error(run("--gguf", str(alone / "missing.gguf")), "not found", "missing.gguf")
    (alone / "broken.gguf").write_bytes(Path(result.text_gguf).read_bytes()[:100000])
    one_line_error(run("--gguf", str(alone / "broken.gguf"), "--mmproj", result.mmproj_gguf), "corrupt GGUF")


@pytest.mark.slow
def test_predict_single_post_gguf_and_hf_agree(tmp_path: Path, exported: Callable[[str], Any]) -> None:
    result = exported("qwen2.5-vl")
    image = tmp_path / "post.png"
    _image(224).save(image)
    common = ["--image", str(image), "--text", POST[0], "--aspect", POST[1], "--max-tokens", "12", "--n-threads", "1",
              "--json"]
    runner = CliRunner()
    gg = runner.invoke(_cli(), ["predict", "--gguf", result.out, "--quant", "f16", *common])
    assert gg.exit_code == 0, gg.output
    hf = runner.invoke(_cli(), ["predict", "--backend", "hf", "--model", result.hf_dir, *common])
    assert hf.exit_code == 0, hf.output
    a, b = json.loads(gg.stdout), json.loads(hf.stdout)
    assert a["backend"] == "gguf" and a["model"] == "student-qwen2.5-vl-F16.gguf" and b["backend"] == "hf"
    cot = a["predictions"][0]
    assert cot["prompt_version"] == get_prompt("cot", "masc").version and cot["tokens_out"] == 12
    assert set(cot) >= {"raw", "fields", "prediction", "parse_status", "valid", "latency_s"}
    assert cot["raw"] == b["predictions"][0]["raw"]  # same greedy tokens, decoded the same way


@pytest.mark.slow
def test_predict_batch_stores_student_gguf_chains_and_resumes(demo_store: Any, exported: Callable[[str], Any]) -> None:
    from mulcot.generation import SOURCE_GGUF, GGUFBackend, PredictConfig
    from mulcot.predict import predict_dataset
    from mulcot.sample import SAMPLE_NAME

    result = exported("qwen2.5-vl")
    config = PredictConfig(max_tokens=8, label_max_tokens=4, n_threads=1, max_pixels=56 * 56)
    seen: list[int] = []
    with GGUFBackend(result.text_gguf, result.mmproj_gguf, config) as gg:
        summary = predict_dataset(demo_store, gg, SAMPLE_NAME, "test", limit=3, prompts=("cot", "label"),
                                  progress=lambda event: seen.append(event.done))
    assert summary.predicted == 3 and summary.extra_prompts == {"label": 3} and summary.skipped_done == 0
    assert seen[-1] == 6
    model = "student-qwen2.5-vl-F16.gguf"
    cot = get_prompt("cot", "masc")
    labels = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_GGUF, stage="label")
    assert len(labels) == 3 and {r["prompt_version"] for r in labels} == {get_prompt("label", "masc").version}
    assert all(r["tokens_out"] == 4 and r["fields"] == ({"Prediction": r["prediction"]} if r["prediction"] else {})
               for r in labels)
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_GGUF, stage="eval")
    assert len(rows) == 3
    for row in rows:
        assert (row["source"], row["stage"], row["model"], row["prompt_version"]) == (
            "student-gguf", "eval", model, cot.version
        )
        assert row["run_id"] == summary.run_id and row["final"] == 1 and row["attempt"] == 1
        assert row["raw"] is not None and row["parse_status"] in ("full", "partial", "none")
        assert row["tokens_out"] == 8 and row["latency_s"] > 0 and isinstance(row["fields"], dict)
    run = demo_store.get_run(summary.run_id)
    assert run["kind"] == "predict" and run["status"] == "done" and run["metrics"]["chains"] == 3

    # the CLI resumes it: 3 already there, 1 more
    r = CliRunner().invoke(_cli(), ["predict", "--gguf", result.text_gguf, "--dataset", SAMPLE_NAME, "--split", "test",
                                    "--limit", "4", "--max-tokens", "8", "--max-pixels", "3136", "--n-threads", "1",
                                    "--db", str(demo_store.path), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["predicted"] == 1 and again["skipped_done"] == 3 and again["chains"] == 4
    assert again["run_id"] == summary.run_id
    assert len(demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_GGUF, stage="eval")) == 4


@pytest.mark.slow
def test_export_cli_json(tmp_path: Path, exported: Callable[[str], Any], student: Callable[[str], Path]) -> None:
    """The command resumes the session's export (nothing to redo) and reports it as JSON; bad input is one line."""
    result = exported("qwen3-vl")
    runner = CliRunner()
    r = runner.invoke(_cli(), ["export", str(student("qwen3-vl")), "--out", result.out, "--quant", "q8_0,q4_k_m",
                               "--db", str(tmp_path / "m.db"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["default_gguf"].endswith("Q4_K_M.gguf") and {s["status"] for s in out["steps"][:-1]} == {"skipped"}
    with Store.open(tmp_path / "m.db") as store:  # the export is recorded as a run
        [run] = store.list_runs(kind="export")
        assert run["status"] == "done" and run["metrics"]["default_gguf"] == out["default_gguf"]
    bad = runner.invoke(_cli(), ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and "no run folder" in bad.output
    bad = runner.invoke(_cli(), ["export", str(student("qwen3-vl")), "--out", str(tmp_path / "o"), "--quant", "q9"])
    assert bad.exit_code != 0 and "unknown quantization type" in bad.output


def test_predict_cli_argument_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(_cli(), ["predict", "--gguf", str(tmp_path)])
    assert r.exit_code != 0 and "either --text" in r.output
    r = runner.invoke(_cli(), ["predict", "--text", "hi", "--gguf", str(tmp_path / "none.gguf")])
    assert r.exit_code != 0 and "not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(_cli(), ["predict", "--text", "hi", "--backend", "onnx"])
    assert r.exit_code != 0 and "unknown --backend" in r.output



# ------------------------------------------------------------------------------------- export --verify N


def test_verify_bad_input_is_one_line_and_changes_nothing(tmp_path: Path, demo_store: Any,
                                                          student: Callable[[str], Path]) -> None:
    """--verify with --no-gguf (no GGUF to verify), without a dataset, or on a dataset the store lacks: one line, a
    non-zero exit, no export folder, the store as it was."""
    runner = CliRunner()
    base = ["export", str(student("qwen2.5-vl")), "--out", str(tmp_path / "o"), "--db", demo_store.path]
    before = dump(demo_store)
    cases = [(["--no-gguf", "--verify", "3", "--verify-dataset", "twitter2015-sample"], "made with --no-gguf has none"),
             (["--verify", "3"], "pass --verify-dataset NAME"),
             (["--verify", "3", "--verify-dataset", "nope"], "nope"),
             (["--verify", "3", "--verify-dataset", "twitter2015-sample", "--verify-split", "x"], "no split 'x'"),
             (["--verify", "0", "--verify-dataset", "twitter2015-sample"], "--verify must be at least 1")]
    for extra, message in cases:
        r = runner.invoke(_cli(), [*base, *extra])
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert r.output.strip().count("\n") == 0 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists() and dump(demo_store) == before


def _text_dataset(store: Any, folder: Path, n: int = 4) -> str:
    """The embedded sample's first ``n`` test posts imported again without their images (dataset ``text-only``):
    posts both runtimes read the same way (images of other sizes are resized differently by mtmd and by
    transformers, so their pixels differ)."""
    import mulcot.sample
    from mulcot.datasets.importer import import_dataset

    tsv = Path(mulcot.sample.__file__).parent / "twitter2015" / "test.tsv"
    rows = tsv.read_text(encoding="utf-8").splitlines()[: n + 1]
    (folder / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    import_dataset(store, "twitter-tsv", folder / "test.tsv", name="text-only", split="test", no_images=True)
    return "text-only"


@pytest.mark.slow
def test_verify_scores_every_gguf_against_the_merged_model(tmp_path: Path, demo_store: Any,
                                                           exported: Callable[[str], Any],
                                                           student: Callable[[str], Path]) -> None:
    """Every exported GGUF (F16 and each quantization) scored by forced choice on 4 posts against the merged model:
    F16 agrees with it and its probabilities are within 0.01; the figures go into the manifest with each file's
    sha256, are shown by the CLI, and a later export that changes no file keeps them. Posts with images go through
    the vision projector."""
    from mulcot.sample import SAMPLE_NAME

    dataset = _text_dataset(demo_store, tmp_path)
    out = tmp_path / "out"
    shutil.copytree(exported("qwen2.5-vl").out, out)  # the session's export: every step but verify is done
    args = ["export", str(student("qwen2.5-vl")), "--out", str(out), "--quant", "q8_0,q4_k_m", "--verify", "4",
            "--verify-dataset", dataset, "--threads", "1", "--db", demo_store.path]
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"verify: 4 posts of {dataset}/test" in text and "q4_k_m" in text and "McNemar p" in text
    manifest = json.loads((out / MANIFEST).read_text())
    v = manifest["verify"]
    assert (v["dataset"], v["split"], v["n"], v["method"]) == (dataset, "test", 4, "forced choice")
    assert set(v["gguf"]) == {"f16", "q8_0", "q4_k_m"}
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    for quant, g in v["gguf"].items():
        assert g["sha256"] == digests[g["file"]] and quant.upper() in g["file"]
        d = g["accuracy_diff"]
        assert d["low"] <= d["diff"] <= d["high"] and 0 <= g["mcnemar_p"] <= 1
        assert g["accuracy"] - v["hf"]["accuracy"] == pytest.approx(d["diff"])
    assert v["gguf"]["f16"]["agreement"] == 1.0 and v["gguf"]["f16"]["max_abs_prob_diff"] < 0.01
    # a rerun without --verify that changes no file keeps the figures
    again = CliRunner().invoke(_cli(), args[:-8] + ["--db", demo_store.path, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["verify"] == v == json.loads((out / MANIFEST).read_text())["verify"]
    # posts with images: through the projector (pixels resized otherwise than transformers does: figures only)
    r = CliRunner().invoke(_cli(), [*args[:7], "2", "--verify-dataset", SAMPLE_NAME, *args[10:], "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["verify"]
    assert v["n"] == 2 and set(v["gguf"]) == {"f16", "q8_0", "q4_k_m"}
    assert all(0 <= g["agreement"] <= 1 and g["max_abs_prob_diff"] < 1 for g in v["gguf"].values())
