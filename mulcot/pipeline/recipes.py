"""Recipes: one TOML file describes a whole pipeline (dataset → teacher → assistant → expansion → student → eval →
export). Validated on load: an unknown key, a wrong type or a value outside the allowed set is one error line that
names the file, the key and what is allowed.

Special values: ``dataset.path = "@sample"`` is the embedded 60-post sample; ``teacher.replay = "@sample"`` serves
the sample's stored teacher chains from a local OpenAI-compatible server instead of calling a real teacher (the
demo; clearly labelled as a replay in every output); a model ``"@tiny:qwen2.5-vl"`` / ``"@tiny:qwen3-vl"`` is a
tiny random-weight model built on the spot (real Qwen2 vocabulary, so it exports to GGUF).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from mulcot.core.settings import config_fields, default_of, field_problem
from mulcot.errors import MulcotError
from mulcot.evaluate.config import PROBES
from mulcot.expand.run import ExpandConfig
from mulcot.train.config import DistillConfig, PreferenceConfig, RLConfig, TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMATS = ("twitter-tsv", "mvsa-raw", "clmlf-json", "mulcot-json", "jsonl")
METRICS = ("sim", "meteor", "bleu", "rouge_l", "distinct_1", "distinct_2")
QUANTS = ("q8_0", "q4_k_m", "q4_0", "q5_k_m", "q6_k")
EVAL_SUBJECTS = ("teacher", "assistant", "student")
PIPELINE_STAGES = ("import", "annotate", "train-assistant", "expand", "distill", "dpo", "grpo", "eval", "export")
OPTIONAL_STAGES = ("dpo", "grpo")  # only in a recipe whose section says enabled = true
# the paper's Table 6, one recipe switch per row (top-level ``ablation = "..."`` or ``mulcot run --ablation``)
ABLATIONS: dict[str, str] = {
    "none": "the full method",
    "no-image": "w/o Img: every model is shown the text alone (no image, no caption) in training, expansion and eval",
    "no-text": "w/o Txt: every model is shown the image (or its caption) and the aspect, not the post's text",
    "no-cot": "w/o CoT: assistant and student trained on the label alone (task weights 1, 0), no expansion, no "
              "chains evaluated",
    "no-assistant": "w/o Asst: no assistant is trained; the student learns from D_t alone with hard labels (λ 0)",
}


class RecipeError(MulcotError):
    """A recipe that does not validate: names the file and the key."""

    exit_code = 2


@dataclass
class DatasetSection:
    name: str
    format: str
    path: str
    images: str | None = None
    no_images: bool = False
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"


@dataclass
class TeacherSection:
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str | None = None  # None: OPENAI_API_KEY for OpenAI, none elsewhere (mulcot.teacher.TeacherConfig)
    concurrency: int = 16
    max_retries: int = 3
    budget_usd: float | None = None
    image_max_side: int = 280
    replay: str | None = None  # "@sample" or a folder of mulcot-json chains: serve those instead of a real teacher
    references: bool = True  # also annotate the eval split: the teacher's chains there are the metrics' references
    skip: bool = False  # the data already carries teacher chains (mulcot-json)


def _section(name: str, cls: type, section: str, *, base: type | None = None,
             own: tuple[tuple[str, type], ...] = ()) -> type:
    """A recipe section made of the config fields of one ``section`` (:mod:`mulcot.train.config`): same names,
    defaults, help and checks (a tuple becomes a TOML list)."""
    hints = get_type_hints(cls)
    specs: list[Any] = list(own)
    for f in config_fields(cls, section=section):
        tp, default = hints[f.name], default_of(f)
        if get_origin(tp) is tuple:
            tp, default = list[get_args(tp)[0]], list(default)
        if isinstance(default, list):
            specs.append((f.name, tp, field(default_factory=lambda d=default: list(d), metadata=f.metadata)))
        else:
            specs.append((f.name, tp, field(default=default, metadata=f.metadata)))
    return dataclasses.make_dataclass(name, specs, bases=(base,) if base else ())


# [assistant] and [student]: the model and its LoRA; [student] adds the distillation knobs; [training]: the rest
ModelSection = _section("ModelSection", TrainConfig, "model", own=(("model", str),))
StudentSection = _section("StudentSection", DistillConfig, "student", base=ModelSection)
TrainingSection = _section("TrainingSection", TrainConfig, "training")
# [dpo]: optional preference optimisation of the student (mulcot dpo) before eval and export
DpoSection = _section("DpoSection", PreferenceConfig, "dpo", own=(("enabled", bool, field(default=False)),))
# [grpo]: optional reinforcement learning of the student (mulcot grpo) after distill (and dpo), before eval and export
GrpoSection = _section("GrpoSection", RLConfig, "grpo", own=(("enabled", bool, field(default=False)),))


# [expand]: the expansion's knobs (ExpandConfig's section "expand") and whether to skip the stage
ExpandSection = _section("ExpandSection", ExpandConfig, "expand", own=(("skip", bool, field(default=False)),))


@dataclass
class EvalSection:
    split: str = "test"
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    max_new_tokens: int = 512
    limit: int | None = None
    max_chains: int | None = None  # chains for the first N posts only (0: none); the label head answers every post
    label_scoring: str = "choice"  # the label head: choice (forced choice) or generate
    subjects: list[str] = field(default_factory=lambda: list(EVAL_SUBJECTS))  # what is evaluated (when it exists)
    majority_from: str = "train"  # the split whose most frequent label is the majority baseline ("none": no row)
    probes: list[str] = field(default_factory=list)  # modality probes of the assistant and student (eval --probe)
    calibrate_on: str | None = None  # a tuning split: each model's label head also recalibrated on it (a row each)


@dataclass
class ExportSection:
    quant: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])
    gguf: bool = True
    predict: bool = True  # one offline prediction with the exported GGUF at the end


@dataclass
class Recipe:
    name: str
    dataset: DatasetSection
    assistant: ModelSection
    student: StudentSection
    description: str = ""
    runs_dir: str = "runs"
    teacher: TeacherSection = field(default_factory=TeacherSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    expand: ExpandSection = field(default_factory=ExpandSection)  # type: ignore[valid-type]
    dpo: DpoSection = field(default_factory=DpoSection)  # type: ignore[valid-type]
    grpo: GrpoSection = field(default_factory=GrpoSection)  # type: ignore[valid-type]
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    ablation: str = "none"  # one of ABLATIONS: applied by ablate() when the recipe is read
    source: str = field(default="", metadata={"internal": True})

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    def stage_hash(self, stage: str) -> str:
        """Hash of everything that decides ``stage``'s result (its sections and those of the stages before it), so
        that changing, say, the eval metrics reruns eval but not training."""
        needs = {
            "import": ("dataset",),
            "annotate": ("teacher",),
            "train-assistant": ("assistant", "training"),
            "expand": ("expand",),
            "distill": ("student",),
            "dpo": ("dpo",),
            "grpo": ("grpo",),
            "eval": ("eval",),
            "export": ("export",),
        }
        data = self.as_dict()
        # keys added later hash only when set, so that existing recipes keep their hashes (no rerun)
        for section, later in _LATER_KEYS.items():
            data[section] = {k: v for k, v in data[section].items() if later.get(k, object()) != v}
        parts: list[Any] = []
        for s in PIPELINE_STAGES[: PIPELINE_STAGES.index(stage) + 1]:
            if s in OPTIONAL_STAGES and not self.enabled(s):
                continue  # a recipe without DPO (GRPO) keeps the hashes it had before the stage existed
            parts.extend(data[k] for k in needs[s])
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


    def enabled(self, stage: str) -> bool:
        """Whether the pipeline runs ``stage``: always, except an optional stage whose section is not enabled, and
        ``train-assistant`` in the no-assistant ablation."""
        if stage == "train-assistant":
            return self.ablation != "no-assistant"
        return stage not in OPTIONAL_STAGES or bool(getattr(self, stage).enabled)


_LATER_KEYS: dict[str, dict[str, Any]] = {
    "eval": {"max_chains": None, "subjects": list(EVAL_SUBJECTS), "majority_from": "train", "probes": [],
             "calibrate_on": None},
    "training": {"inputs": "all"},
}

# checks of the sections that are not derived from a config (those carry ``choices`` / ``min`` in their metadata)
_ALLOWED = {"dataset.format": FORMATS, "eval.label_scoring": ("choice", "generate"), "ablation": tuple(ABLATIONS)}
_ALLOWED_ITEMS = {"eval.metrics": METRICS, "export.quant": QUANTS, "eval.subjects": EVAL_SUBJECTS,
                  "eval.probes": tuple(PROBES)}
_POSITIVE = {"teacher.concurrency", "expand.n"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _check_value(file: str, key: str, value: Any, tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is not None and type(None) in args:  # X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_value(file, key, value, inner)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{file}: '{key}' must be a list, got {value!r}")
        return [_check_value(file, f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise RecipeError(f"{file}: '{key}' must be a {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: Any, file: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{file}: '{prefix}' must be a table ([{prefix}])")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
            raise RecipeError(f"{file}: unknown key '{full}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, file, full)
            continue
        value = _check_value(file, full, value, tp)
        allowed = _ALLOWED.get(full)
        if allowed and value not in allowed:
            raise RecipeError(f"{file}: '{full}' is {value!r}; allowed: {', '.join(allowed)}")
        problem = field_problem(known[key], value)  # the config field's own checks (choices, ranges)
        if problem:
            raise RecipeError(f"{file}: '{full}' {problem}")
        if full in _ALLOWED_ITEMS:
            for item in value:
                if item not in _ALLOWED_ITEMS[full]:
                    raise RecipeError(f"{file}: '{full}' has {item!r}; allowed: {', '.join(_ALLOWED_ITEMS[full])}")
        if full in _POSITIVE and value is not None and value < 1:
            raise RecipeError(f"{file}: '{full}' must be at least 1, got {value!r}")
        kwargs[key] = value
    missing = [
        name for name, f in known.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in [{prefix}]" if prefix else ""
        raise RecipeError(f"{file}: missing key '{(prefix + '.') if prefix else ''}{missing[0]}'{where}")
    return cls(**kwargs)


def _validate(recipe: Recipe, file: str) -> None:
    from mulcot.core.keys import key_env_problem, url_secrets
    from mulcot.train.pairs import parse_sources

    weights = recipe.training.task_weights
    if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
        raise RecipeError(
            f"{file}: 'training.task_weights' must be two non-negative numbers [cls, rea], e.g. [0.2, 0.8]"
        )
    try:
        parse_sources(recipe.dpo.sources)
    except MulcotError as err:
        raise RecipeError(f"{file}: 'dpo.sources': {err}") from None
    teacher = recipe.teacher
    if teacher.base_url and (found := url_secrets(teacher.base_url)):
        raise RecipeError(f"{file}: 'teacher.base_url' carries {' and '.join(found)}: a recipe is shared and stored "
                          "with the run; put the key in a variable such as MULCOT_TEACHER_KEY and name it in "
                          "'teacher.api_key_env'")
    if teacher.api_key_env and not teacher.replay and (problem := key_env_problem(teacher.api_key_env,
                                                                                   teacher.base_url)):
        raise RecipeError(f"{file}: 'teacher.api_key_env': {problem}")
    if recipe.teacher.replay and recipe.teacher.skip:
        raise RecipeError(f"{file}: 'teacher.replay' and 'teacher.skip' exclude each other")
    if not recipe.name or any(c in recipe.name for c in "/\\ "):
        raise RecipeError(f"{file}: 'name' must be a non-empty word without spaces or slashes")


def parse_recipe(text: str, file: str = "<recipe>") -> Recipe:
    """Validate recipe TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{file}: not valid TOML ({exc})") from None
    recipe = _build(Recipe, data, file, "")
    recipe.source = file
    _validate(recipe, file)
    wanted, recipe.ablation = recipe.ablation, "none"
    return ablate(recipe, wanted)


def ablate(recipe: Recipe, ablation: str) -> Recipe:
    """The recipe as one row of the paper's Table 6 (:data:`ABLATIONS`): a copy named ``NAME-ABLATION`` (its own
    runs and stage records) with the sections the ablation changes."""
    if ablation not in ABLATIONS:
        raise RecipeError(f"{recipe.source or '<recipe>'}: ablation {ablation!r} is not one of "
                          f"{', '.join(ABLATIONS)}")
    if ablation in ("none", recipe.ablation):
        return recipe
    if recipe.ablation != "none":
        raise RecipeError(f"{recipe.source or '<recipe>'}: the recipe is already the '{recipe.ablation}' ablation; "
                          "one ablation at a time")
    r = dataclasses.replace(recipe, name=f"{recipe.name}-{ablation}", ablation=ablation,
                            training=dataclasses.replace(recipe.training), expand=dataclasses.replace(recipe.expand),
                            student=dataclasses.replace(recipe.student), eval=dataclasses.replace(recipe.eval))
    if ablation in ("no-image", "no-text"):
        r.training.inputs = ablation
    elif ablation == "no-cot":
        r.training.task_weights = [1.0, 0.0]
        r.expand.skip = True
        r.eval.max_chains = 0
    elif ablation == "no-assistant":
        r.expand.skip = True
        r.student.lam = 0.0
        r.eval.subjects = [s for s in r.eval.subjects if s != "assistant"]
    return r


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe file (``@tiny-cpu`` names the one bundled with mulcot)."""
    path = bundled_recipe(str(path)[1:]) if str(path).startswith("@") else Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    return parse_recipe(path.read_text(encoding="utf-8"), str(path))


def bundled_recipe(name: str) -> Path:
    """A recipe shipped inside the package (``mulcot/pipeline/bundled/NAME.toml``)."""
    return Path(__file__).parent / "bundled" / f"{name}.toml"
