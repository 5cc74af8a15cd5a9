"""`mulcot data …` through the CLI."""

import json
from pathlib import Path

from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.sample import SAMPLE_DIR, SAMPLE_NAME
from mulcot.store import Store

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_import_list_stats_json(tmp_path):
    db = tmp_path / "m.db"
    out = json.loads(_invoke("data", "import", "twitter-tsv", SAMPLE_DIR, "--name", "s", "--db", db, "--json").stdout)
    assert out["added"] == 60 and out["splits"] == {"train": 36, "dev": 12, "test": 12} and out["problems"] == []
    again = json.loads(_invoke("data", "import", "twitter-tsv", SAMPLE_DIR, "--name", "s", "--db", db, "--json").stdout)
    assert (again["added"], again["unchanged"]) == (0, 60)
    listed = json.loads(_invoke("data", "list", "--db", db, "--json").stdout)
    assert [(d["name"], d["samples"], d["chains"]) for d in listed] == [("s", 60, 0)]
    text = _invoke("data", "import", "mulcot-json", SAMPLE_DIR / "chains", "--name", "s", "--images",
                   SAMPLE_DIR / "images", "--db", db).stdout
    text = " ".join(text.split())
    assert "chains added 60" in text and "unchanged 60" in text
    stats = json.loads(_invoke("data", "stats", "s", "--db", db, "--json").stdout)
    assert stats["samples"] == 60 and stats["splits"]["train"]["labels"] == {"negative": 12, "neutral": 12,
                                                                              "positive": 12}
    assert sum(c["chains"] for c in stats["chains"]) == 60
    assert stats["teacher_set"]["train"] == 34  # two release chains in train disagree with the gold label
    table = _invoke("data", "stats", "s", "--db", db).stdout
    assert "teacher set D_t" in table and "train" in table


def test_list_empty_and_unknown_dataset(tmp_path):
    db = tmp_path / "m.db"
    r = runner.invoke(app, ["data", "list", "--db", str(db)])  # reading never creates a store
    assert r.exit_code == 1 and "no mulcot database at" in r.output and not db.exists()
    Store.open(db).close()
    assert "no datasets" in _invoke("data", "list", "--db", db).stdout
    r = runner.invoke(app, ["data", "stats", "nope", "--db", str(db)])
    assert r.exit_code == 1 and "no dataset named 'nope'" in r.output


def _sample_with_chains(db):
    _invoke("data", "import", "twitter-tsv", SAMPLE_DIR, "--name", SAMPLE_NAME, "--db", db)
    return _invoke("data", "import", "mulcot-json", SAMPLE_DIR / "chains", "--name", SAMPLE_NAME, "--images",
                   SAMPLE_DIR / "images", "--db", db).stdout


def test_export_jsonl_and_sharegpt(tmp_path):
    db = tmp_path / "m.db"
    _sample_with_chains(db)
    lines = _invoke("data", "export", SAMPLE_NAME, "--format", "jsonl", "--split", "train", "--db", db).stdout
    records = [json.loads(x) for x in lines.splitlines()]
    assert len(records) == 36 and all(len(r["chains"]) == 1 for r in records)
    assert records[0]["image"].endswith(".jpg") and records[0]["aspect"]

    out = tmp_path / "train.json"
    _invoke("data", "export", SAMPLE_NAME, "--format", "sharegpt", "--split", "train", "--out", out, "--db", db)
    data = json.loads(out.read_text())
    reasoning = [d for d in data if "Text_analysis" in d["conversations"][1]["value"]]
    labels = [d for d in data if d["conversations"][1]["value"].startswith('"Prediction"')]
    assert len(reasoning) == 34 and len(labels) == 36  # D_t chains + one label example per sample
    assert all(d["conversations"][0]["value"].startswith("<image>") and len(d["images"]) == 1 for d in data)
    assert all(d["conversations"][0]["from"] == "human" and d["conversations"][1]["from"] == "gpt" for d in data)
    assert all(d["conversations"][0]["value"].count("<image>") == len(d["images"]) for d in data)
    assert all(not Path(d["images"][0]).is_absolute() and (tmp_path / d["images"][0]).is_file() for d in data)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["train"] == {"file_name": "train.json", "formatting": "sharegpt",
                             "columns": {"messages": "conversations", "images": "images"},
                             "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                      "assistant_tag": "gpt"}}
    every = tmp_path / "all.json"
    _invoke("data", "export", SAMPLE_NAME, "--format", "sharegpt", "--split", "train", "--all-chains", "--out",
            every, "--db", db)
    assert len(json.loads(every.read_text())) == 36 + 36
    assert set(json.loads((tmp_path / "dataset_info.json").read_text())) == {"train", "all"}  # entries add up


def test_reimport_of_chains_is_idempotent(tmp_path):
    db = tmp_path / "demo.db"
    first = " ".join(_sample_with_chains(db).split())
    assert "chains added 60" in first
    second = " ".join(_sample_with_chains(db).split())
    assert "chains added 0, already stored 60" in second
    with Store.open(db) as s:
        assert s.dataset_stats(SAMPLE_NAME)["samples"] == 60


def test_jsonl_export_imports_back_as_it_was(tmp_path):
    """data export NAME FILE.jsonl, then data import jsonl FILE (no --images) into another store: the same samples
    (split, id, text, aspect, label, the same image bytes) and the same chains; the export's image paths are relative
    to its folder (images linked or copied into images/ there), so the folder can move."""
    from mulcot.core.chains import chain_row
    from mulcot.pipeline.demo import run_demo

    db = tmp_path / "a.db"
    with Store.open(db) as s:
        run_demo(s)  # the sample with the authors' teacher chains
        sample = s.samples(SAMPLE_NAME, "dev")[0]
        s.add_reasoning(**chain_row(sample_id=sample["id"], source="student", model="tiny", stage="eval",
                                    output="no idea", prompt_version="p9", run_id="eval-x", origin="eval"))
    out = tmp_path / "share" / "t15.jsonl"
    out.parent.mkdir()
    _invoke("data", "export", SAMPLE_NAME, out, "--db", db)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["image"] and not Path(r["image"]).is_absolute() and (out.parent / r["image"]).is_file()
               for r in records)
    moved = tmp_path / "elsewhere"
    out.parent.rename(moved)  # the export folder travels
    copy = tmp_path / "b.db"
    report = json.loads(_invoke("data", "import", "jsonl", moved / "t15.jsonl", "--name", "copy", "--db", copy,
                                "--json").stdout)
    assert report["problems"] == [] and report["added"] == 60 and report["chains_added"] == 61

    def samples(path: Path, name: str) -> list[tuple]:
        with Store.open(path) as s:
            return sorted((r["split"], r["key"], r["text"], r["aspect"], r["label"], r["image_sha256"])
                          for r in s.samples(name))

    def chains(path: Path, name: str) -> list[tuple]:
        with Store.open(path) as s:
            return sorted((c["split"], c["key"], c["source"], c["model"], c["stage"], c["prompt_version"] or "",
                           c["raw"], c["prediction"] or "") for c in s.reasonings(dataset=name, final_only=True))

    assert samples(copy, "copy") == samples(db, SAMPLE_NAME)
    assert chains(copy, "copy") == chains(db, SAMPLE_NAME) and len(chains(copy, "copy")) == 61
    again = json.loads(_invoke("data", "import", "jsonl", moved / "t15.jsonl", "--name", "copy", "--db", copy,
                               "--json").stdout)
    assert (again["unchanged"], again["chains_added"], again["chains_existing"]) == (60, 0, 61)


def test_import_help_says_where_images_are_looked_up_and_it_is_so(tmp_path):
    from PIL import Image

    help_text = runner.invoke(app, ["data", "import", "--help"], env={"COLUMNS": "200"}).output
    text = " ".join(help_text.replace("│", " ").split())
    assert "jsonl: the data file's folder" in text and "images/, Images/, data/ beside the data" in text
    assert "chains (a list of {source, stage, raw or text, model, prompt_version})" in text
    folder = tmp_path / "posts"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "beside.jpg")
    Image.new("RGB", (8, 8)).save(folder / "images" / "inside.jpg")
    (folder / "train.jsonl").write_text('{"text": "a", "image": "beside.jpg"}\n{"text": "b", "image": "inside.jpg"}\n')
    report = json.loads(_invoke("data", "import", "jsonl", folder / "train.jsonl", "--db", tmp_path / "m.db",
                                "--json").stdout)
    assert report["images_root"] == str(folder.resolve()) and report["added"] == 1
    assert report["problems"] == [f"{folder / 'train.jsonl'}:2: field 'image': image 'inside.jpg' not found in "
                                  f"{folder.resolve()}"]


def test_readme_commands_single_quote_dollar_t():
    """A shell expands $T inside double quotes: every README line that passes $T$ quotes it with single quotes."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("mulcot ") and "$T$" in line]
    assert commands
    for line in commands:
        quoted = [chunk for i, chunk in enumerate(line.split('"')) if i % 2 == 1]
        assert not any("$T$" in chunk for chunk in quoted), line
