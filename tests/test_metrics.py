"""Metrics (mulcot.metrics, mulcot.metrics.wordnet) against reference values computed with the
reference libraries."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mulcot import metrics as M
from mulcot.errors import MetricsError, WordNetMissingError
from mulcot.metrics import wordnet as wn

DATA = Path(__file__).parent.parent.parent / "shared" / "data"
REFERENCE_VALUES = DATA / "metric_reference_values.json"
AUTHORS_CHAINS = DATA / "mulcot-rd" / "t15-test.json"


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ref() -> dict:
    if not REFERENCE_VALUES.is_file():
        pytest.skip(f"reference values not found at {REFERENCE_VALUES} (../shared/data beside the repo)")
    return json.loads(REFERENCE_VALUES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def chains() -> list[str]:
    if not AUTHORS_CHAINS.is_file():
        pytest.skip(
            f"the authors' reasoning not found at {AUTHORS_CHAINS} (../shared/data beside the repo)"
        )
    return [item["cot"] for item in json.loads(AUTHORS_CHAINS.read_text(encoding="utf-8"))]


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nltk data dir with WordNet: a fresh copy of Debian's (exercising the set-up), else an installed
    one."""
    if (wn.DEBIAN_WORDNET_DIR / "index.noun").is_file():
        target = tmp_path_factory.mktemp("nltk_data")
        wn.install_wordnet_from_debian(target)
        return target
    status = wn.wordnet_status()
    if not status.available:
        pytest.skip(status.message)
    assert status.data_dir is not None
    return status.data_dir


@pytest.fixture(scope="session")
def wordnet_reader(nltk_data: Path):
    return wn.ensure_wordnet(nltk_data)


@pytest.fixture(scope="session")
def sim_model():
    return M.load_sim_model()


# -------------------------------------------------------------------------------------- classification


def test_classification_reference_values(ref: dict) -> None:
    out = M.classification_metrics(ref["cls_y_true"], ref["cls_y_pred"])
    assert out["accuracy"] == pytest.approx(ref["cls_acc"], abs=1e-6)
    assert out["weighted_f1"] == pytest.approx(ref["cls_weighted_f1(labels=L)"], abs=1e-6)
    assert out["macro_f1"] == pytest.approx(ref["cls_macro_f1(labels=L)"], abs=1e-6)
    assert out["invalid_predictions"] == 1


def test_classification_hand_made() -> None:
    gold = ["positive", "neutral", "negative", "neutral", "negative"]
    pred = ["Positive", "neu", "positive", "cannot tell", "negative"]
    out = M.classification_metrics(gold, pred)
    assert out["n"] == 5
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["labels"] == ["positive", "neutral", "negative"]
    # rows gold, columns predicted; the unparseable prediction is in no column
    assert out["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert out["invalid_predictions"] == 1
    assert out["per_label"]["neutral"] == {
        "gold": 2,
        "predicted": 1,
        "correct": 1,
        "invalid": 1,
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
    }
    f1 = {"positive": 2 / 3, "neutral": 2 / 3, "negative": 2 / 3}
    assert out["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert out["weighted_f1"] == pytest.approx(
        (1 * f1["positive"] + 2 * f1["neutral"] + 2 * f1["negative"]) / 5
    )


def test_classification_perfect_and_all_invalid() -> None:
    gold = ["positive", "neutral", "negative"]
    perfect = M.classification_metrics(gold, gold)
    assert perfect["accuracy"] == perfect["weighted_f1"] == perfect["macro_f1"] == 1.0
    invalid = M.classification_metrics(gold, [None, "", "maybe"])
    assert invalid["accuracy"] == invalid["weighted_f1"] == invalid["macro_f1"] == 0.0
    assert invalid["confusion_matrix"] == [[0] * 3] * 3
    assert invalid["invalid_predictions"] == 3


def test_classification_errors() -> None:
    with pytest.raises(MetricsError, match="2 gold labels but 1 predictions"):
        M.classification_metrics(["positive", "neutral"], ["positive"])
    with pytest.raises(MetricsError, match="gold label #2"):
        M.classification_metrics(["positive", "happy"], ["positive", "positive"])
    with pytest.raises(MetricsError):
        M.classification_metrics([], [])


def test_consistency() -> None:
    assert (
        M.consistency(["positive", "Neutral", "negative", None], ["positive", "neutral", "neutral", None])
        == 0.5
    )
    assert M.consistency(["x"], ["x"]) == 0.0  # two unparseable predictions do not agree
    with pytest.raises(MetricsError):
        M.consistency(["positive"], [])


# ------------------------------------------------------------------------------- reasoning, per metric


def test_bleu_reference_values(ref: dict) -> None:
    each = [M.sentence_bleu(p, r) for p, r in zip(ref["preds"], ref["refs"], strict=True)]
    assert each == pytest.approx(ref["bleu_pairwise_each"], abs=1e-6)
    assert sum(each) / len(each) == pytest.approx(
        ref["bleu_pairwise_mean_13a_nosmooth (MulCoT-RD/HF-evaluate)"], abs=1e-6
    )
    assert M.corpus_bleu(ref["preds"], ref["refs"]) == pytest.approx(
        ref["sacrebleu_corpus_default/100"], abs=1e-6
    )


def test_bleu_is_sacrebleu_sentence_bleu() -> None:
    import sacrebleu

    pairs = [
        ("the cat sat on the mat .", "the cat is on the mat ."),
        ("", "a b c d"),
        ("a b c d", "a b c d"),
    ]
    for p, r in pairs:
        expected = (
            sacrebleu.sentence_bleu(
                p, [r], smooth_method="none", tokenize="13a", use_effective_order=False
            ).score
            / 100
        )
        assert M.sentence_bleu(p, r) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_reference_values(ref: dict) -> None:
    each = [M.rouge_l_f(p, r) for p, r in zip(ref["preds"], ref["refs"], strict=True)]
    assert each == pytest.approx(ref["rougeL_f_pltrdy_rouge_1.0.1_each (MulCoT-RD)"], abs=1e-6)


def test_rouge_l_equals_rouge_package(chains: list[str]) -> None:
    from rouge import Rouge

    rouge = Rouge(metrics=["rouge-l"])
    rng = random.Random(7)
    pairs = [(rng.choice(chains), rng.choice(chains)) for _ in range(12)] + [(c, c) for c in chains[:3]]
    pairs += [
        ("a. ", "a"),
        (" ", "a"),
        ("x..y", "y x"),
        ("Hello World. hello", "hello world"),
        ("a\tb\nc", "c b a"),
    ]
    for p, r in pairs:
        assert M.rouge_l_f(p, r) == rouge.get_scores(p, r)[0]["rouge-l"]["f"]


@pytest.mark.parametrize(
    ("pred", "ref_text"), [("", "a b"), ("a b", ""), ("...", "a"), ("", ""), (None, "a")]
)
def test_rouge_l_no_sentence_is_zero(pred: str | None, ref_text: str) -> None:
    from rouge import Rouge

    if pred is not None:
        with pytest.raises(ValueError):  # what the package does; we define 0.0 instead
            Rouge(metrics=["rouge-l"]).get_scores(pred, ref_text)
    assert M.rouge_l_f(pred, ref_text) == 0.0


def test_meteor_reference_values(ref: dict, wordnet_reader) -> None:
    each = [
        M.meteor(M.tokenize(p), M.tokenize(r), wordnet_reader)
        for p, r in zip(ref["preds"], ref["refs"], strict=True)
    ]
    assert each == pytest.approx(ref["meteor_nltk_treebank_lower_each (MulCoT-RD)"], abs=1e-6)


def test_distinct_reference_values(ref: dict) -> None:
    tokens = [M.tokenize(p) for p in ref["preds"]]
    per_text = [sum(M.distinct_n(t, n) for t in tokens) / len(tokens) for n in (1, 2)]
    assert per_text == pytest.approx(ref["distinct12_per_text_mean (MulCoT-RD)"], abs=1e-6)
    corpus = [M.corpus_distinct_n(tokens, n) for n in (1, 2)]
    assert corpus == pytest.approx(ref["distinct12_corpus (Li et al.)"], abs=1e-6)


def test_distinct_edge_cases() -> None:
    assert M.distinct_n([], 1) == 0.0
    assert M.distinct_n(["one"], 2) == 0.0  # shorter than n
    assert M.distinct_n(["a", "a", "b"], 1) == pytest.approx(2 / 3)
    assert M.corpus_distinct_n([[], ["x"]], 2) == 0.0


def test_sim_reference_values(ref: dict, sim_model) -> None:
    each = M.sim_scores(sim_model, ref["preds"], ref["refs"])
    assert each == pytest.approx(ref["sim_all-MiniLM-L6-v2_each"], abs=1e-4)


def test_default_sim_model_is_the_offline_package() -> None:
    path = M.default_sim_model_path()
    assert path.name == "model" and (path / "model.safetensors").is_file()
    assert M.load_sim_model() is M.load_sim_model(path)  # cached, same object for the same folder
    with pytest.raises(MetricsError, match="cannot load the Sim model"):
        M.load_sim_model(Path("/nonexistent/sim-model"))


# ----------------------------------------------------------------------------- reasoning_metrics (API)


def test_reasoning_metrics_reference_values(ref: dict, nltk_data: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    scores = M.reasoning_metrics(
        ref["preds"],
        ref["refs"],
        corpus=True,
        nltk_data_dir=nltk_data,
        progress=lambda e: calls.append((e.message, e.done, e.total)),
    )
    assert scores.n == 3 and scores.unavailable == {}
    assert scores.metrics == M.REASONING_METRICS
    assert scores.means["bleu"] == pytest.approx(
        ref["bleu_pairwise_mean_13a_nosmooth (MulCoT-RD/HF-evaluate)"], abs=1e-6
    )
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert scores.means["rouge_l"] == pytest.approx(
        mean(ref["rougeL_f_pltrdy_rouge_1.0.1_each (MulCoT-RD)"]), abs=1e-6
    )
    assert scores.means["meteor"] == pytest.approx(
        mean(ref["meteor_nltk_treebank_lower_each (MulCoT-RD)"]), abs=1e-6
    )
    assert scores.per_pair["sim"] == pytest.approx(ref["sim_all-MiniLM-L6-v2_each"], abs=1e-4)
    d1, d2 = ref["distinct12_per_text_mean (MulCoT-RD)"]
    assert (scores.means["distinct_1"], scores.means["distinct_2"]) == pytest.approx((d1, d2), abs=1e-6)
    c1, c2 = ref["distinct12_corpus (Li et al.)"]
    assert scores.corpus == pytest.approx(
        {"bleu": ref["sacrebleu_corpus_default/100"], "distinct_1": c1, "distinct_2": c2}, abs=1e-6
    )
    assert (
        scores.headline["bleu"] == scores.corpus["bleu"] and scores.headline["sim"] == scores.means["sim"]
    )
    assert set(scores.load_seconds) == {"wordnet", "sim_model"}
    assert set(M.REASONING_METRICS) <= set(scores.score_seconds)
    assert {m for m, _, _ in calls} == set(M.REASONING_METRICS)
    assert all(d == t for m, d, t in calls if m != "sim" and d == 3)
    json.dumps(scores.to_dict(per_pair=True))  # JSON-ready


def test_reasoning_metrics_subset_and_errors() -> None:
    scores = M.reasoning_metrics(["a b c", None], ["a b c", "x"], metrics=["BLEU", "rouge-l", "distinct-2"])
    assert scores.metrics == ("bleu", "rouge_l", "distinct_2")
    assert scores.per_pair["bleu"] == [0.0, 0.0]  # 3 tokens: no 4-gram, no smoothing
    assert scores.per_pair["rouge_l"] == pytest.approx([1.0, 0.0], abs=1e-7)
    assert scores.per_pair["distinct_2"] == [1.0, 0.0]
    assert scores.load_seconds == {}
    with pytest.raises(MetricsError, match="unknown reasoning metric"):
        M.reasoning_metrics(["a"], ["a"], metrics=["cider"])
    with pytest.raises(MetricsError, match="2 predictions but 1 references"):
        M.reasoning_metrics(["a", "b"], ["a"])
    with pytest.raises(MetricsError):
        M.reasoning_metrics([], [])


def test_meteor_unavailable_without_wordnet(tmp_path: Path) -> None:
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    status = wn.wordnet_status(empty)
    assert not status.available and status.searched == (empty,)
    assert "apt-get install -y wordnet-base wordnet-sense-index" in status.message
    with pytest.raises(WordNetMissingError):
        wn.ensure_wordnet(empty)
    scores = M.reasoning_metrics(
        ["the cat sat on the mat"],
        ["the cat sat on a mat"],
        metrics=["meteor", "bleu"],
        nltk_data_dir=empty,
    )
    assert not scores.available("meteor") and "meteor" not in scores.per_pair
    assert "WordNet" in scores.unavailable["meteor"] and "\n" not in scores.unavailable["meteor"]
    assert scores.headline == {"meteor": None, "bleu": scores.means["bleu"]}


# -------------------------------------------------------------------------------------- WordNet set-up


def test_install_wordnet_from_debian(tmp_path: Path) -> None:
    if not (wn.DEBIAN_WORDNET_DIR / "index.noun").is_file():
        pytest.skip("Debian WordNet not installed: apt-get install -y wordnet-base wordnet-sense-index")
    wn_dir = wn.install_wordnet_from_debian(tmp_path)
    assert wn_dir == tmp_path / "corpora" / "wordnet"
    for name in wn.REQUIRED_FILES:
        assert (wn_dir / name).is_file() and not (wn_dir / name).is_symlink()
    lines = (wn_dir / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert wn.install_wordnet_from_debian(tmp_path) == wn_dir  # idempotent
    status = wn.wordnet_status(tmp_path)
    assert status.available and status.path == wn_dir


def test_wordnet_zip_format(nltk_data: Path, tmp_path: Path) -> None:
    """nltk's downloader layout (corpora/wordnet.zip) is found and loads too."""
    import shutil

    status = wn.wordnet_status(nltk_data)
    if status.path is None or status.path.suffix == ".zip":
        pytest.skip("needs an unzipped WordNet to build the zip from")
    (tmp_path / "corpora").mkdir()
    shutil.make_archive(str(tmp_path / "corpora" / "wordnet"), "zip", status.path.parent, "wordnet")
    zipped = wn.wordnet_status(tmp_path)
    assert zipped.available and zipped.path == tmp_path / "corpora" / "wordnet.zip"
    reader = wn.ensure_wordnet(tmp_path)
    # "car" matches "auto" only through WordNet synonyms ("bus" does not)
    hyp, ref_tokens = ["i", "drove", "my", "car", "home"], ["i", "drove", "my", "auto", "home"]
    assert M.meteor(hyp, ref_tokens, reader) == pytest.approx(0.996)
    assert M.meteor(["i", "drove", "my", "bus", "home"], ref_tokens, reader) == pytest.approx(0.75)


def test_lexnames_from_man_page_matches_builtin_table() -> None:
    if not wn.DEBIAN_LEXNAMES_MAN.is_file():
        pytest.skip(f"{wn.DEBIAN_LEXNAMES_MAN} not installed (Debian package wordnet-base)")
    assert wn.lexnames_text(wn.DEBIAN_LEXNAMES_MAN) == wn.lexnames_text(None)


def test_install_wordnet_without_debian_source(tmp_path: Path) -> None:
    with pytest.raises(WordNetMissingError, match="apt-get install -y wordnet-base wordnet-sense-index"):
        wn.install_wordnet_from_debian(tmp_path / "out", source_dir=tmp_path / "missing")


def test_default_nltk_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NLTK_DATA", raising=False)
    assert wn.default_nltk_data_dir() == Path("~/.cache/mulcot/nltk_data").expanduser()
    monkeypatch.setenv("NLTK_DATA", f"{tmp_path}/a{__import__('os').pathsep}{tmp_path}/b")
    assert wn.default_nltk_data_dir() == tmp_path / "a"
    assert wn.search_dirs()[:3] == [
        tmp_path / "a",
        tmp_path / "b",
        Path("~/.cache/mulcot/nltk_data").expanduser(),
    ]


# --------------------------------------------------------------------------- the authors' 1,037 chains


def _self_and_shuffled(texts: list[str]) -> tuple[list[str], list[str]]:
    """Pairs (t, t) then (t, other t): preds and refs for one call, so each distinct text is embedded once."""
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    return texts + texts, texts + shuffled


@pytest.mark.slow
def test_authors_chains_self_and_shuffled(chains: list[str], nltk_data: Path) -> None:
    """All 1,037 chains against themselves: BLEU 1, ROUGE-L 1, METEOR near 1; against a shuffled copy: sane
    lower values. (Sim has its own test on a subset: embedding 1,037 long texts takes minutes on 2 cores.)"""
    n = len(chains)
    assert n == 1037
    preds, refs = _self_and_shuffled(chains)
    lexical = ["meteor", "bleu", "rouge_l", "distinct_1", "distinct_2"]
    scores = M.reasoning_metrics(preds, refs, nltk_data_dir=nltk_data, corpus=True, metrics=lexical)
    assert scores.unavailable == {}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    same = {m: scores.per_pair[m][:n] for m in ("meteor", "bleu", "rouge_l")}
    other = {m: scores.per_pair[m][n:] for m in ("meteor", "bleu", "rouge_l")}
    assert min(same["bleu"]) == pytest.approx(1.0, abs=1e-9)
    assert min(same["rouge_l"]) == pytest.approx(1.0, abs=1e-7)  # the package's 1e-8 in F's denominator
    assert min(same["meteor"]) > 0.99
    # shuffled: same domain and template, so far from 0, but clearly below 1
    assert 0.1 < mean(other["bleu"]) < 0.6
    assert 0.2 < mean(other["rouge_l"]) < 0.7
    assert 0.2 < mean(other["meteor"]) < 0.7
    for m in other:
        assert mean(other[m]) < mean(same[m]) - 0.2
    assert 0.3 < scores.means["distinct_1"] < 1 and scores.means["distinct_2"] > scores.means["distinct_1"]
    assert 0 < scores.corpus["distinct_1"] < scores.means["distinct_1"]  # pooled: repeats across texts


@pytest.mark.slow
def test_authors_chains_sim(chains: list[str], sim_model) -> None:
    """Sim of the first 128 chains: 1 against themselves, lower against a shuffled copy."""
    k = 128
    preds, refs = _self_and_shuffled(chains[:k])
    scores = M.reasoning_metrics(preds, refs, metrics=["sim"], sim_model=sim_model)
    same, other = scores.per_pair["sim"][:k], scores.per_pair["sim"][k:]
    assert min(same) == pytest.approx(1.0, abs=1e-5) and max(same) == pytest.approx(1.0, abs=1e-5)
    assert 0.3 < sum(other) / k < 0.9
    assert scores.load_seconds["sim_model"] < 1.0  # given a loaded model: nothing to load
