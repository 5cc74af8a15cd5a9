"""`mulcot data export NAME --format hf DIR`: a folder that `datasets.load_dataset` reads, images included."""

from pathlib import Path

from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.sample import SAMPLE_DIR, SAMPLE_NAME

runner = CliRunner()


def _invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def _sample(db: Path) -> None:
    _invoke("data", "import", "twitter-tsv", SAMPLE_DIR, "--name", SAMPLE_NAME, "--db", db)
    _invoke("data", "import", "mulcot-json", SAMPLE_DIR / "chains", "--name", SAMPLE_NAME, "--images",
            SAMPLE_DIR / "images", "--db", db)


def test_hf_export_loads_with_datasets_and_images_decode(tmp_path):
    from datasets import load_dataset
    from PIL import Image

    db, out = tmp_path / "m.db", tmp_path / "hf"
    _sample(db)
    assert "wrote 60 records" in " ".join(_invoke("data", "export", SAMPLE_NAME, "--format", "hf", out,
                                                  "--db", db).stdout.split())
    ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 36, "dev": 12, "test": 12}
    assert type(ds["train"].features["image"]).__name__ == "Image"
    row = ds["test"][0]
    assert isinstance(row["image"], Image.Image) and min(row["image"].size) > 0
    row["image"].load()  # the JPEG decodes fully, not just its header
    assert row["label"] in ("positive", "neutral", "negative") and row["aspect"] and row["text"]
    assert row["source"] == "teacher" and row["Text_analysis"] and row["reasoning"].startswith('"Text_analysis"')
    assert sum(r["correct"] for r in ds["train"]) == 34  # two release chains in train disagree with the gold label
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n") and "github.com/jefferyYu/TomBERT" in card
    assert "github.com/123sghn/MulCoTRD" in card and "path: data/dev-*.parquet" in card


def test_hf_export_images_equal_the_files(tmp_path):
    import pyarrow.parquet as pq

    db, out = tmp_path / "m.db", tmp_path / "hf"
    _sample(db)
    _invoke("data", "export", SAMPLE_NAME, "--format", "hf", "--split", "dev", "--out", out, "--db", db)
    table = pq.read_table(out / "data" / "dev-00000-of-00001.parquet").to_pylist()
    assert len(table) == 12 and sorted(p.name for p in (out / "data").iterdir()) == ["dev-00000-of-00001.parquet"]
    for row in table:
        assert row["image"]["bytes"] == (SAMPLE_DIR / "images" / row["image"]["path"]).read_bytes()


def test_hf_export_refuses_a_full_folder_and_a_missing_folder(tmp_path):
    db, out = tmp_path / "m.db", tmp_path / "hf"
    _sample(db)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _invoke("data", "export", SAMPLE_NAME, "--format", "hf", out, "--db", db, code=1)
    assert "is not an empty folder" in r.output and (out / "keep.txt").read_text() == "mine"
    r = _invoke("data", "export", SAMPLE_NAME, "--format", "hf", "--db", db, code=1)
    assert "writes a folder" in r.output and "Traceback" not in r.output
