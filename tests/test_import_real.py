"""Imports of the real data in ../shared/data and of the embedded sample."""

import pytest

from mulcot.datasets import import_dataset
from mulcot.errors import DataError
from mulcot.sample import SAMPLE_DIR

README_COUNTS = {  # neg/neu/pos per split, from ../shared/data/README.md
    "twitter2015": {"train": (368, 1883, 928), "dev": (149, 670, 303), "test": (113, 607, 317)},
    "twitter2017": {"train": (416, 1638, 1508), "dev": (144, 517, 515), "test": (168, 573, 493)},
}
# neg/neu/pos from the CLMLF files' own codes (0/1/2 = positive/neutral/negative)
MVSA_COUNTS = {
    "mvsa-single": {"train": (1088, 376, 2147), "dev": (135, 47, 268), "test": (135, 47, 268)},
    "mvsa-multiple": {"train": (1040, 3528, 9056), "dev": (129, 440, 1131), "test": (129, 440, 1131)},
}


def _label_counts(store, name):
    st = store.dataset_stats(name)
    return {
        split: tuple(s["labels"].get(lab, 0) for lab in ("negative", "neutral", "positive"))
        for split, s in st["splits"].items()
    }


def test_twitter2015_with_all_images(store, shared_data):
    report = import_dataset(store, "twitter-tsv", shared_data / "twitter2015")
    assert report.problems == [] and report.dataset == "twitter2015" and report.task == "masc"
    assert report.splits == {"train": 3179, "dev": 1122, "test": 1037}
    assert report.text_only == 0
    assert _label_counts(store, "twitter2015") == README_COUNTS["twitter2015"]
    st = store.dataset_stats("twitter2015")
    assert all(s["images"] == s["samples"] for s in st["splits"].values())
    s = store.samples("twitter2015", "train", limit=1)[0]
    assert s["key"] == "1" and s["aspect"] == "Chuck Bass" and s["label"] == "positive"
    assert s["text"] == "RT @ ltsChuckBass : Chuck Bass is everything # MCM" and "$T$" in s["raw_text"]
    assert len(s["image_sha256"]) == 64 and s["image_path"].endswith("1860693.jpg")

    again = import_dataset(store, "twitter-tsv", shared_data / "twitter2015")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 5338)
    assert store.dataset_stats("twitter2015")["samples"] == 5338


def test_twitter2017_needs_no_images_flag(store, shared_data):
    with pytest.raises(DataError, match="--no-images"):
        import_dataset(store, "twitter-tsv", shared_data / "twitter2017")
    assert store.list_datasets() == []
    report = import_dataset(store, "twitter-tsv", shared_data / "twitter2017", no_images=True)
    assert report.problems == [] and report.text_only == sum(report.splits.values())
    assert _label_counts(store, "twitter2017") == README_COUNTS["twitter2017"]


@pytest.mark.parametrize("name", ["mvsa-single", "mvsa-multiple"])
def test_mvsa_clmlf_text(store, shared_data, name):
    report = import_dataset(store, "clmlf-json", shared_data / name, no_images=True)
    assert report.problems == [] and report.task == "msa"
    assert _label_counts(store, name) == MVSA_COUNTS[name]


def test_authors_json_with_teacher_chains(store, shared_data):
    report = import_dataset(
        store,
        "mulcot-json",
        shared_data / "mulcot-rd/t15-test.json",
        name="t15-release",
        images=shared_data / "twitter2015/images",
    )
    assert report.problems == [] and report.splits == {"test": 1037} and report.chains_added == 1037
    st = store.dataset_stats("t15-release")
    chains = {(c["source"], c["stage"]): c for c in st["chains"]}
    assert sum(c["chains"] for c in chains.values()) == 1037
    assert sum(c["full"] for c in chains.values()) == 1037
    assert sum(c["correct"] for c in chains.values()) == 1016
    assert set(chains) == {("teacher", "predict"), ("teacher", "explain")}
    again = import_dataset(
        store,
        "mulcot-json",
        shared_data / "mulcot-rd/t15-test.json",
        name="t15-release",
        images=shared_data / "twitter2015/images",
    )
    assert again.chains_added == 0 and again.chains_existing == 1037 and again.unchanged == 1037


def test_embedded_sample_tsv_and_chains_attach(store):
    first = import_dataset(store, "twitter-tsv", SAMPLE_DIR, name="s")
    assert first.splits == {"train": 36, "dev": 12, "test": 12} and first.problems == []
    assert first.labels == {"positive": 20, "neutral": 20, "negative": 20}
    second = import_dataset(store, "mulcot-json", SAMPLE_DIR / "chains", name="s", images=SAMPLE_DIR / "images")
    assert second.added == 0 and second.chains_added == 60
    assert store.dataset_stats("s")["samples"] == 60
