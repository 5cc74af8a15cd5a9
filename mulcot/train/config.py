"""The training runs' settings: pure dataclasses, importable without torch (TRL's ``*Config`` shape).

Each field is declared once, with its help text and its checks (:mod:`mulcot.core.settings`), and everything else is
derived from it: the command-line flags of ``train-assistant``, ``distill``, ``dpo`` and ``grpo``
(:func:`mulcot.cli.config_options.config_options`), the recipe sections ``[training]``, ``[assistant]``,
``[student]``, ``[dpo]`` and ``[grpo]`` (:mod:`mulcot.pipeline.recipes`), what ``mulcot run`` passes to the trainers
(:mod:`mulcot.pipeline`), and the validation on construction (a library caller gets the CLI's one-line error).
Sections: ``training`` (shared by the training stages), ``model`` (per model: [assistant] and [student]),
``student`` (distillation only), ``dpo``, ``grpo``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mulcot.core.images import DEFAULT_MAX_PIXELS
from mulcot.core.inputs import INPUTS
from mulcot.core.settings import ConfigError, Validated
from mulcot.core.settings import field_ as _f
from mulcot.errors import MulcotError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Language model only: Qwen-VL vision blocks also have gate/up/down_proj, which a plain suffix match would hit
# (as the authors' code does: --lora-targets all).
LANGUAGE_ONLY = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LORA_TARGET_CHOICES = ("language", "all")
SOFT_MODES = ("cache", "online", "server")
# Experiment trackers, through the HF Trainer's own integrations (report_to); "none": log.jsonl and curves.png only.
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


def parse_weights(value: str | tuple | list) -> tuple[float, float]:
    """``"0.2,0.8"`` (or a pair) -> (λ_cls, λ_rea)."""
    try:
        cls, rea = (float(x) for x in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise MulcotError(f"--task-weights '{value}' is not 'CLS,REA', e.g. 0.2,0.8") from None
    return cls, rea


@dataclass
class TrainConfig(Validated):
    """A training run's settings (train-assistant; distill adds :class:`DistillConfig`'s)."""

    dataset: str = _f(help="Dataset with teacher chains (D_t).", cli=False)
    model: str = _f(help="Base model: hub id (Qwen/Qwen2.5-VL-7B-Instruct) or folder.", cli=False)
    name: str = _f(help="Run name (folder runs/NAME).", cli=False)
    split: str = _f("train", "Training split.")
    dev_split: str | None = _f("dev", "Dev split for per-epoch evaluation.",
                               none_flag=("--no-dev", "Skip dev evaluation (keeps the last epoch)."))
    task_weights: tuple[float, float] = _f(
        (0.2, 0.8), "λ_cls,λ_rea: 0.2,0.8 (paper) or 0.5,0.5 (authors' code).", section="training", parse=parse_weights
    )
    lora_r: int = _f(16, "LoRA rank.", section="model", min=1)
    lora_alpha: int = _f(32, "LoRA alpha.", section="model", above=0)
    lora_dropout: float = _f(0.05, "LoRA dropout.", section="model", min=0, max=1)
    lora_targets: str = _f("language", "language (LM projections), all (suffix match, vision MLPs too, as the authors' "
                           "code) or module names.", section="model", choices=LORA_TARGET_CHOICES)
    lr: float = _f(3e-4, "AdamW learning rate.", section="training", above=0)
    weight_decay: float = _f(0.0, "AdamW weight decay (0, the Trainer's default, as before).", section="training")
    batch_size: int = _f(2, "Chains per micro-batch (each gives 2 sequences).", section="training", min=1)
    grad_accum: int = _f(20, "Gradient accumulation steps.", section="training", min=1)
    epochs: float = _f(20, "Epochs at most.", section="training", above=0)
    plateau_epochs: int = _f(2, "Halve the lr after this many epochs without dev gain.", section="training", min=1)
    lr_factor: float = _f(0.5, "Factor of the lr on a dev plateau.", section="training", above=0, max=1)
    min_lr: float = _f(1e-6, "Floor of the lr halving.", section="training", min=0)
    warmup_steps: int = _f(0, "Linear lr warm-up, in optimizer steps.", section="training", min=0)
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "Images are downsized to at most this many pixels.",
                         section="training", min=1)
    single_pass: bool = _f(True, "One forward pass per task instead of one for both.", section="training",
                           flag="--two-pass", invert=True)
    packing: bool = _f(True, "train-assistant: padding-free batches for text-only models (each sequence attends "
                       "to itself only); --no-packing pads every sequence to the longest.", section="training",
                       flag="--no-packing", invert=True)
    device: str | None = _f(None, "cuda, cuda:1, mps or cpu (default: best available).", section="training")
    dtype: str | None = _f(None, "bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).", section="training")
    load_in_4bit: bool = _f(False, "QLoRA through bitsandbytes.", section="training")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.", section="training")
    deepspeed: str | None = _f(None, "DeepSpeed config JSON (ZeRO-2/3, see examples/deepspeed/); launch with "
                               "torchrun or accelerate launch.", section="training")
    fsdp: str | None = _f(None, "FSDP for the Trainer: true (settings in --fsdp-config) or legacy options such as "
                          "'full_shard auto_wrap'; launch with torchrun.", section="training")
    fsdp_config: str | None = _f(None, "FSDP config JSON (see examples/fsdp/).", section="training")
    processes: int = _f(1, "Recipes: train on this many processes (mulcot run launches the training stages with "
                        "torchrun --nproc_per_node N, one per GPU).", section="training", min=1,
                        cli=False)
    seed: int = _f(42, "Random seed.", section="training")
    report_to: str = _f("none", "Also log to tensorboard (runs/NAME/tensorboard), wandb or mlflow (their usual "
                        "environment variables apply); log.jsonl and curves.png are always written.",
                        section="training", choices=REPORT_TO)
    max_train_items: int | None = _f(None, "Use only the first N chains.", section="training", min=1)
    inputs: str = _f("all", "What the model sees of a post: all, no-image (text only, no caption: the paper's w/o "
                     "Img) or no-text (image and aspect: w/o Txt); eval and expand show the run the same.",
                     section="training", choices=INPUTS)
    max_dev_samples: int | None = _f(None, "Evaluate on the first N dev samples.", section="training", min=1)
    save_steps: int | None = _f(None, "Checkpoint every N optimizer steps (default: each epoch).", section="training")
    dev_batch_size: int = _f(8, "Dev samples per generation batch.", section="training", min=1)
    dev_max_new_tokens: int = _f(16, "Token limit of a dev label answer.", section="training", min=1)
    allow_text_only: bool = _f(False, "Train on a dataset imported without images.")
    runs_dir: str | None = _f(None, "Where run folders go (default: runs/ beside the database).")
    extra: dict[str, Any] = _f({}, "Free-form notes kept with the run.", cli=False)

    def check(self) -> None:
        weights = tuple(self.task_weights)
        if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError("--task-weights must be two non-negative numbers, e.g. 0.2,0.8")

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def folder(self) -> Path:
        """The run folder, ``runs_dir/name`` (``runs_dir`` unset: ``runs/`` here; the stages set it to the one
        beside the database first, :func:`with_runs_dir`)."""
        return Path(self.runs_dir or "runs") / self.name


@dataclass
class DistillConfig(TrainConfig):
    """A student run: the training settings plus the assistant and the distillation knobs."""

    assistant: str = _f("", "The trained assistant: runs/NAME, an adapter folder or a run name (none: λ 0 on D_t "
                        "only, the paper's w/o Asst).", cli=False)
    lam: float = _f(0.3, "λ: weight of the soft (KL) loss against the hard (CE) loss.", section="student",
                    min=0, max=1)
    tau: float = _f(2.0, "τ: softmax temperature of the soft labels.", section="student", above=0)
    tau_squared: bool = _f(False, "Scale the soft loss by τ² (Hinton et al.).", section="student")
    soft_labels: str = _f("cache", "cache (top-k on disk, frugal), online (assistant resident) or server (top-k "
                          "from the assistant's --server, cached).", section="student", choices=SOFT_MODES)
    top_k: int = _f(32, "Cached soft labels: top-k log-probs per target position.", section="student", min=1)
    server: str = _f("", "--soft-labels server: the server serving the assistant (http://HOST:PORT/v1; vLLM or "
                     "llama-cpp-python). Its key, if any, from MULCOT_SERVER_KEY.", section="student")
    served_model: str = _f("", "--soft-labels server: the assistant's name in the server's /v1/models.",
                           section="student")
    server_concurrency: int = _f(4, "--soft-labels server: requests in flight.", section="student", min=1)
    server_text_only: bool = _f(False, "--soft-labels server: accept soft labels over the text-only rendering "
                                "(captions for images) of a vision-language run.", section="student")
    include_expanded: bool = _f(True, "Train on D_t only (skip D_a).", flag="--no-expanded", invert=True)

    def check(self) -> None:
        """The rules across fields (λ, τ, k and the mode are checked by their fields): ``--soft-labels server`` needs
        --server and --served-model, and a URL without credentials (``user:password@`` or a ``?api-key=`` query: its
        key comes from MULCOT_SERVER_KEY); the server settings mean nothing in the other modes. On construction,
        so the CLI refuses before the training stack is imported."""
        from mulcot.core.keys import url_secrets

        super().check()
        if not self.assistant and (self.lam > 0 or self.include_expanded):
            raise ConfigError("name the trained assistant (--assistant RUN): it gives the soft labels and D_a; "
                              "without one, train on D_t with hard labels only (--lam 0 --no-expanded)")
        if self.soft_labels != "server":
            if self.server or self.served_model:
                raise ConfigError("--server/--served-model are for --soft-labels server (the assistant's server)")
            return
        if not self.server or not self.served_model:
            raise ConfigError("--soft-labels server needs --server URL and --served-model NAME (the assistant as the "
                              "server serves it)")
        if not self.server.startswith(("http://", "https://")):
            raise ConfigError(f"--server must be an http(s) URL such as http://127.0.0.1:8000/v1, not '{self.server}'")
        if found := url_secrets(self.server):
            raise ConfigError(f"--server must not carry credentials (it has {' and '.join(found)}; they would be "
                              "stored with the run): put the key in MULCOT_SERVER_KEY")

    def server_config(self) -> Any:
        """The :class:`mulcot.generation.server.ServerConfig` of the --server settings (``soft_labels = server``)."""
        from mulcot.generation.server import ServerConfig

        return ServerConfig(url=self.server, served_model=self.served_model, concurrency=self.server_concurrency,
                            text_only=True)


# ``distill --on-policy``: refused, and why (README, "Beyond the paper"). TRL 1.16's on-policy trainers cannot be the
# mode the issue asks for — the student's own samples scored by the assistant *mixed by a λ* with mulcot's multi-task
# supervised loss: ``DistillationTrainer`` is on-policy only (prompts in, no supervised part), and ``GKDTrainer``
# mixes by λ per batch but its supervised part is a JSD on SFT-format sequences, its forward passes carry only
# input_ids (a Qwen-VL student would distil without its images) and it needs the assistant resident for full logits
# (no cached top-k). Making either do the multi-task mix means mulcot's own generation loop inside a trainer.
ON_POLICY_REFUSAL = (
    "--on-policy is not available: TRL's on-policy trainers cannot mix the student's own samples with the multi-task "
    "supervised loss by a λ (DistillationTrainer is on-policy only; GKDTrainer drops the images and needs the "
    "assistant resident): distil with the default soft labels (--soft-labels cache|online|server), then train the "
    "student on its own samples with `mulcot grpo`"
)

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")  # TRL's DPOConfig.loss_type


@dataclass
class PreferenceConfig(Validated):
    """A DPO run (``mulcot dpo``): preference optimisation of a trained assistant's or student's LoRA adapter on
    pairs of chains (:mod:`mulcot.train.pairs`), through TRL's ``DPOTrainer``. The adapter keeps its own LoRA settings;
    the reference policy is the starting adapter."""

    dataset: str = _f(help="Dataset whose pairs train the run.", cli=False)
    model: str = _f(help="The trained run to start from: a run name, runs/NAME or an adapter folder.", cli=False)
    name: str = _f(help="Run name (folder runs/NAME).", cli=False)
    split: str = _f("train", "Training split of the pairs.")
    sources: str = _f("teacher,assistant,student,ratings", "Where rejected chains come from (comma-separated).",
                      flag="--from", section="dpo")
    beta: float = _f(0.1, "β: how far the policy may move from the reference (higher: less).", section="dpo",
                     above=0)
    loss: str = _f("sigmoid", "TRL's DPO loss: sigmoid (DPO), ipo, hinge, robust, …", section="dpo",
                   choices=DPO_LOSSES)
    lr: float = _f(5e-5, "AdamW learning rate.", section="dpo", above=0)
    batch_size: int = _f(2, "Pairs per micro-batch.", section="dpo", min=1)
    grad_accum: int = _f(4, "Gradient accumulation steps.", section="dpo", min=1)
    epochs: float = _f(1, "Epochs over the pairs.", section="dpo", above=0)
    warmup_steps: int = _f(0, "Linear lr warm-up, in optimizer steps (then linear decay).", section="dpo", min=0)
    max_pairs: int | None = _f(None, "Use only the first N pairs.", section="dpo", min=1)
    max_length: int | None = _f(None, "Truncate sequences to N tokens (text-only models; default: none).",
                                section="dpo")
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "Images are downsized to at most this many pixels.",
                         section="training", min=1)
    device: str | None = _f(None, "cuda, cuda:1, mps or cpu (default: best available).", section="training")
    dtype: str | None = _f(None, "bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).", section="training")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.", section="training")
    seed: int = _f(42, "Random seed.", section="training")
    save_steps: int | None = _f(None, "Checkpoint every N optimizer steps (default: each epoch).", section="training")
    report_to: str = _f("none", "Also log to tensorboard (runs/NAME/tensorboard), wandb or mlflow (their usual "
                        "environment variables apply); log.jsonl and curves.png are always written.",
                        section="training", choices=REPORT_TO)
    runs_dir: str | None = _f(None, "Where run folders go (default: runs/ beside the database).")

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def folder(self) -> Path:
        """The run folder, ``runs_dir/name`` (see :attr:`TrainConfig.folder`)."""
        return Path(self.runs_dir or "runs") / self.name


def parse_reward_weights(value: str | tuple | list) -> tuple[float, float, float]:
    """``"1,0.5,0.5"`` (or a triple) -> the weights of :data:`mulcot.train.rewards.REWARDS`, in that order."""
    try:
        weights = tuple(float(x) for x in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        weights = ()
    if len(weights) != 3:
        raise MulcotError(f"--reward-weights '{value}' is not 'LABEL,FORMAT,AGREEMENT', e.g. 1,0.5,0.5")
    return weights  # type: ignore[return-value]


@dataclass
class RLConfig(Validated):
    """A GRPO run (``mulcot grpo``): reinforcement learning of a trained assistant's or student's LoRA adapter on
    its own sampled chains (P_cot on training posts), through TRL's ``GRPOTrainer``, with the rewards of
    :mod:`mulcot.train.rewards`. The adapter keeps its own LoRA settings; the KL reference is the starting adapter.
    Named ``RLConfig`` so as not to shadow TRL's ``GRPOConfig``, which :mod:`mulcot.train.grpo` builds from it."""

    dataset: str = _f(help="Dataset whose labelled training posts are the prompts.", cli=False)
    model: str = _f(help="The trained run to start from: a run name, runs/NAME or an adapter folder.", cli=False)
    name: str = _f(help="Run name (folder runs/NAME).", cli=False)
    split: str = _f("train", "Split of the prompts (a training split: its gold labels are rewards).")
    group_size: int = _f(4, "Completions sampled per prompt (GRPO's group; advantages are relative within it).",
                         section="grpo", min=2)
    beta: float = _f(0.04, "β: weight of the KL to the starting adapter (0: no reference, no KL).", section="grpo",
                     min=0)
    temperature: float = _f(1.0, "Sampling temperature of the completions.", section="grpo", above=0)
    max_new_tokens: int = _f(192, "Token limit of a sampled chain.", section="grpo", min=1)
    reward_weights: tuple[float, float, float] = _f(
        (1.0, 0.5, 0.5), "Weights of the three rewards: label correct, fields parse, agrees with the label head.",
        section="grpo", parse=parse_reward_weights)
    lr: float = _f(1e-5, "AdamW learning rate.", section="grpo", above=0)
    batch_size: int = _f(1, "Prompts per micro-batch (each sampled --group-size times).", section="grpo", min=1)
    grad_accum: int = _f(1, "Gradient accumulation steps (prompts per optimizer step: batch × accumulation).",
                         section="grpo", min=1)
    epochs: float = _f(1, "Epochs over the prompts (--steps overrides).", section="grpo", above=0)
    steps: int | None = _f(None, "Optimizer steps in all (default: --epochs over the prompts).", section="grpo",
                           min=1)
    max_prompts: int | None = _f(None, "Use only the first N training posts.", section="grpo", min=1)
    warmup_steps: int = _f(0, "Linear lr warm-up, in optimizer steps (then linear decay).", section="grpo", min=0)
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "Images are downsized to at most this many pixels.",
                         section="training", min=1)
    device: str | None = _f(None, "cuda, cuda:1, mps or cpu (default: best available).", section="training")
    dtype: str | None = _f(None, "bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).", section="training")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.", section="training")
    seed: int = _f(42, "Random seed.", section="training")
    save_steps: int | None = _f(None, "Checkpoint every N optimizer steps (default: each epoch).", section="training")
    report_to: str = _f("none", "Also log to tensorboard (runs/NAME/tensorboard), wandb or mlflow (their usual "
                        "environment variables apply); log.jsonl and curves.png are always written.",
                        section="training", choices=REPORT_TO)
    runs_dir: str | None = _f(None, "Where run folders go (default: runs/ beside the database).")

    def check(self) -> None:
        self.reward_weights = parse_reward_weights(self.reward_weights)  # "1,0.5,0.5" or a list, as from a recipe
        if len(tuple(self.reward_weights)) != 3 or min(self.reward_weights) < 0 or sum(self.reward_weights) <= 0:
            raise ConfigError("--reward-weights must be three non-negative numbers, not all 0, e.g. 1,0.5,0.5")

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def folder(self) -> Path:
        """The run folder, ``runs_dir/name`` (see :attr:`TrainConfig.folder`)."""
        return Path(self.runs_dir or "runs") / self.name


AnyConfig = TrainConfig | PreferenceConfig | RLConfig

# What does not change what a run learns (where and how fast it runs, how it reports and checkpoints, the spelling
# of a starting adapter, which its digest stands for): a resume may change these, and nothing else.
OPERATIONAL = frozenset({
    "name", "runs_dir", "device", "report_to", "extra", "processes", "save_steps", "dev_batch_size", "deepspeed",
    "fsdp", "fsdp_config", "gradient_checkpointing", "assistant", "server", "served_model", "server_concurrency",
})
# Settings that stand for a starting adapter, and the flag that names it.
DIGEST_FLAGS = {"assistant_sha256": "--assistant", "start_sha256": "--model"}


def with_runs_dir(config: Any, runs_dir: str | Path) -> Any:
    """``config`` with its ``runs_dir`` set (to ``runs_dir`` when unset: the folder beside the database)."""
    return config if config.runs_dir else replace(config, runs_dir=str(runs_dir))


def deciding_settings(config: AnyConfig, *, leave_out: tuple[str, ...] = (), **digests: str) -> dict[str, Any]:
    """The settings that decide what a run learns, as JSON values: every field but :data:`OPERATIONAL` ones (and
    ``leave_out``), plus ``digests`` of starting adapters (``assistant_sha256``, ``start_sha256``)."""
    values = json.loads(json.dumps(config.public(), default=str))
    out = {k: v for k, v in values.items() if k not in OPERATIONAL and k not in leave_out}
    out.update(digests)
    return out


def settings_hash(settings: dict[str, Any]) -> str:
    """sha256 of :func:`deciding_settings` (stored with the run)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def changed_settings(cls: type, recorded: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``--lr 0.1 (was 0.0003)`` for each deciding setting that differs from the run's ``recorded`` config (settings
    an older run did not record are not compared)."""
    flags = {f.name: f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in fields(cls)}
    inverted = {f.name for f in fields(cls) if f.metadata.get("invert")}  # --two-pass sets single_pass False
    out = []
    for key, value in settings.items():
        if key not in recorded or recorded[key] == value:
            continue
        if key in DIGEST_FLAGS:
            new, was = str(value)[:12], str(recorded[key])[:12]
            out.append(f"{DIGEST_FLAGS[key]} (another adapter: sha256 {new}, was {was})")
            continue
        if key in inverted:
            out.append(f"{flags[key]} {'off' if value else 'on'} (was {'off' if recorded[key] else 'on'})")
            continue
        shown = ",".join(str(v) for v in value) if isinstance(value, list) else value
        was = ",".join(str(v) for v in recorded[key]) if isinstance(recorded[key], list) else recorded[key]
        out.append(f"{flags.get(key, '--' + key.replace('_', '-'))} {shown} (was {was})")
    return out


def lora_target_modules(spec: str, *, text_only: bool = False) -> str | list[str]:
    """peft ``target_modules`` for ``language`` (default), ``all`` (suffix match, vision MLPs too) or a list.
    A text-only backbone is all language model: ``language`` is then the plain suffix match."""
    if spec == "language":
        return list(LORA_TARGETS) if text_only else LANGUAGE_ONLY
    if spec == "all":
        return list(LORA_TARGETS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise MulcotError("--lora-targets is empty: use language, all, or module names like q_proj,v_proj")
    return names
