"""One evaluation's settings (:class:`EvalConfig`, what the CLI's flags and a recipe's [eval] build) and its result
(:class:`EvalResult`, what ``--json`` prints and ``result.json`` holds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.core.settings import ConfigError, Validated, field_
from mulcot.errors import MulcotError
from mulcot.evaluate.select import Subject
from mulcot.generation.server import ServerConfig

# how each number of the eval table is computed (its footer, and result.json's "definitions")
METRIC_DEFINITIONS: dict[str, str] = {
    "Acc": "share of samples whose predicted label equals the gold label; from the label prompt (P_label) when the "
    "model has a label head (label scoring 'choice': the most probable of its three answers; 'generate': its "
    "generated answer, parsed), else from the chain's own Prediction; an unparseable answer counts as wrong",
    "w-F1": "F1 per label (2PR/(P+R)) averaged with weights = gold support (scikit-learn 'weighted'); reported for MSA",
    "m-F1": "unweighted mean of the three labels' F1 (scikit-learn 'macro'); reported for MASC",
    "Cons.": "share of samples where the chain's own Prediction equals the label head's prediction (both valid)",
    "Sim": "cosine similarity of all-MiniLM-L6-v2 sentence embeddings of chain and reference (256 word pieces), "
    "mean over pairs",
    "METEOR": "nltk meteor_score (alpha 0.9, beta 3, gamma 0.5, WordNet synonyms, Porter stems) on lowercased "
    "Treebank tokens, mean over pairs",
    "BLEU": "sacrebleu sentence BLEU, 13a tokens, 4-gram, no smoothing, mean over pairs (corpus BLEU with --corpus)",
    "ROUGE-L": "F of the summary-level union LCS (rouge 1.0.1: sentences split at '.', whitespace words), mean over "
    "pairs",
    "Dist-1/2": "distinct n-grams / all n-grams of a chain's lowercased Treebank tokens, mean over chains (pooled "
    "over all chains with --corpus)",
    "gold-conditioned": "a release's kept chains (imported or replayed): correct stage-1 answers and explanations "
    "written given the gold label, the teacher's wrong answers left out, so Acc and F1 measure no model; the "
    "chains serve as references",
}


# the modality probes (mulcot.evaluate.probes): what each changes in a post
PROBES: dict[str, str] = {
    "image-blank": "the image replaced by a blank grey one of the same size (a text-only backbone: no caption)",
    "image-swap": "the image (and caption) of another post, a fixed derangement (seed 0)",
    "text-drop": "the post's text removed: the image (or caption) and the aspect only",
}


def parse_probes(value: str | Sequence[str] | None) -> list[str] | None:
    """Probe names from a comma list (or a list); ``all`` is every probe; unknown names are one line."""
    if value is None:
        return None
    names = [x.strip() for x in (value.split(",") if isinstance(value, str) else value) if x.strip()]
    if names == ["all"]:
        return list(PROBES)
    unknown = [n for n in names if n not in PROBES]
    if unknown or not names:
        raise MulcotError(f"unknown probe {', '.join(repr(n) for n in unknown) or '(none given)'}: use "
                          f"{', '.join(PROBES)} (comma-separated) or all")
    return list(dict.fromkeys(names))


@dataclass
class EvalConfig(Validated):
    """One evaluation's settings (the CLI's flags). Exactly one of ``model`` and ``source``."""

    dataset: str
    split: str = "test"
    model: str | None = None
    source: str | None = None
    refs: str | None = None  # None: teacher (none when the teacher itself is evaluated); "none": no references
    sim_model: str | None = None
    corpus: bool = False
    metrics: list[str] | None = None  # reasoning metrics (default all)
    limit: int | None = field_(None, "Only the first N labelled samples of the split.", min=1)
    max_new_tokens: int = field_(512, "Token limit of a generated chain.", min=1)
    max_chains: int | None = field_(None, "Model mode: generate chains for the first N posts only (0: none); the "
                                    "label head still answers every post.", min=0)
    label_max_new_tokens: int = field_(16, "Token limit of a label answer.", min=1)
    batch_size: int = field_(8, "Samples per generation batch.", min=1)
    max_pixels: int | None = None  # default: the training default (280*280)
    device: str | None = None
    dtype: str | None = None
    load_in_4bit: bool = False
    nltk_data_dir: str | None = None
    embedding_cache: bool = True
    out: str | None = None
    runs_dir: str | None = None  # where run folders are (default: runs/ beside the database)
    write_files: bool = True
    server: ServerConfig | None = None  # model mode: generate through an OpenAI-compatible server
    per_post: str | None = None  # also write the per-post predictions to this .csv or .jsonl file
    majority_from: str | None = field_("train", "Split whose most frequent gold label is the majority baseline the "
                                       "result is compared with ('none': no baseline).")
    label_scoring: str = field_("choice", "How the label head answers: choice (forced choice: the three answers' "
                                "log-probabilities, the most probable taken) or generate (generated and parsed).",
                                choices=("choice", "generate"))

    probes: list[str] | None = None  # modality probes (mulcot.evaluate.probes), model mode only
    calibrate_on: str | None = field_(None, "Model mode, forced choice: recalibrate the label head on this split's "
                                      "posts (bias-corrected temperature scaling) and report it beside the raw one.")

    def check(self) -> None:
        if self.probes is not None:
            self.probes = parse_probes(self.probes)
            if self.model is None:
                raise ConfigError("--probe changes what a model is shown: give --model RUN (stored chains cannot be "
                                  "asked again)")
        if (self.model is None) == (self.source is None):
            raise ConfigError("name what to evaluate: --model RUN_OR_FOLDER or --source teacher|assistant|student|RUN")
        if self.max_chains is not None and self.model is None:
            raise ConfigError("--max-chains limits the chains a model generates: give --model RUN (stored chains "
                              "are scored as they are)")
        if self.calibrate_on is not None and (self.model is None or self.label_scoring != "choice"):
            raise ConfigError("--calibrate-on fits the label head's probabilities: give --model RUN with "
                              "--label-scoring choice")
        if self.server is not None and self.model is None:
            raise ConfigError("--server generates with a model: give --model RUN (stored chains need no server)")

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["server"] = self.server.public() if self.server is not None else None
        return out


@dataclass
class EvalResult:
    """A finished evaluation: what ``--json`` prints and ``result.json`` holds."""

    id: int | None
    dataset: str
    split: str
    task: str
    subject: Subject
    n: int
    metrics: dict[str, Any]
    config: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    probes: list[dict[str, Any]] = field(default_factory=list)  # each probe's result id and comparison

    def to_dict(self, *, per_sample: bool = False) -> dict[str, Any]:
        out = {
            "id": self.id, "dataset": self.dataset, "split": self.split, "task": self.task,
            "subject": self.subject.public(), "source": self.subject.source, "model": self.subject.model,
            "run_id": self.subject.run_id, "n": self.n, "metrics": self.metrics, "config": self.config,
            "files": self.files, "wall_s": round(self.wall_s, 3), "definitions": METRIC_DEFINITIONS,
        }
        if self.probes:
            out["probes"] = self.probes
        if per_sample:
            out["per_sample"] = self.per_sample
        return out
