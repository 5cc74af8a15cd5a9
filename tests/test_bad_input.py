"""A corpus of malformed inputs: each gives one clear line naming file, row and problem; --strict exits non-zero
and leaves the store exactly as before; the default skips bad rows and imports the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dump
from PIL import Image
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.datasets import import_dataset
from mulcot.store import Store

HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n"
GOOD_ROW = "1\t2\tgood.jpg\tI love $T$ today\tParis\n"


def _image(path: Path, size=(32, 24)) -> None:
    Image.new("RGB", size, (200, 30, 30)).save(path, "JPEG")


def _tsv(tmp: Path, bad_row: str | bytes, images: dict[str, bytes | None] | None = None) -> Path:
    folder = tmp / "tw"
    (folder / "images").mkdir(parents=True)
    _image(folder / "images" / "good.jpg")
    for name, data in (images or {}).items():
        target = folder / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            _image(target)
        else:
            target.write_bytes(data)
    body = (HEADER + GOOD_ROW).encode()
    body += bad_row if isinstance(bad_row, bytes) else bad_row.encode()
    (folder / "train.tsv").write_bytes(body)
    return folder


def _json_file(tmp: Path, name: str, data, raw: str | None = None) -> Path:
    folder = tmp / "js"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    _image(folder / "images" / "7.jpg")
    path = folder / name
    path.write_text(raw if raw is not None else json.dumps(data))
    return path


def _truncated_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


GOOD_CLMLF = {"id": "7", "text": "nice day", "emotion_label": 0}
GOOD_RELEASE = {
    "id": 7,
    "text": "I love Paris",
    "aspect": "Paris",
    "label": "positive",
    "image_path": "7.jpg",
    "cot": '"Prediction": "positive"',
}


def _mvsa(tmp: Path, label_lines: str, texts: dict[str, str] | None = None) -> Path:
    root = tmp / "mvsa"
    (root / "data").mkdir(parents=True)
    _image(root / "data" / "1.jpg")
    (root / "data" / "1.txt").write_text("a good post")
    for key, text in (texts or {}).items():
        (root / "data" / f"{key}.txt").write_text(text)
        _image(root / "data" / f"{key}.jpg")
    (root / "labelResultAll.txt").write_text("ID\ttext,image\n1\tpositive,positive\n" + label_lines)
    return root


# (case id, builder(tmp) -> (format, path, extra cli args), expected message fragment, whole input unusable?)
CASES = [
    ("missing-file", lambda t: ("twitter-tsv", t / "nope" / "train.tsv", []), "no such file or folder", True),
    (
        "wrong-columns",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tgood.jpg\tno aspect $T$\n"), []),
        "train.tsv:3: expected 5 tab-separated columns",
        False,
    ),
    (
        "unknown-label",
        lambda t: ("twitter-tsv", _tsv(t, "2\t5\tgood.jpg\tx $T$\tA\n"), []),
        "train.tsv:3: field 'label': unknown label value '5'",
        False,
    ),
    (
        "empty-text",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tgood.jpg\t \tA\n"), []),
        "train.tsv:3: field 'text': empty text",
        False,
    ),
    (
        "no-placeholder",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tgood.jpg\tno target here\tA\n"), []),
        "train.tsv:3: field 'text': text has no $T$",
        False,
    ),
    (
        "empty-aspect",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tgood.jpg\tx $T$\t \n"), []),
        "train.tsv:3: field 'aspect': empty aspect",
        False,
    ),
    (
        "missing-image",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tgone.jpg\tx $T$\tA\n"), []),
        "train.tsv:3: field 'image': image 'gone.jpg' not found",
        False,
    ),
    (
        "corrupt-image",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tbad.jpg\tx $T$\tA\n", {"bad.jpg": b"\x00garbage" * 50}), []),
        "image 'bad.jpg' does not decode",
        False,
    ),
    (
        "zero-byte-image",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\tzero.jpg\tx $T$\tA\n", {"zero.jpg": b""}), []),
        "image 'zero.jpg' is an empty (zero-byte) file",
        False,
    ),
    (
        "truncated-image",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\thalf.jpg\tx $T$\tA\n", {"half.jpg": _truncated_jpeg()}), []),
        "image 'half.jpg' does not decode",
        False,
    ),
    (
        "image-escapes-root",
        lambda t: ("twitter-tsv", _tsv(t, "2\t1\t../../secret.jpg\tx $T$\tA\n"), []),
        "leads outside the image folder",
        False,
    ),
    (
        "non-utf8",
        lambda t: ("twitter-tsv", _tsv(t, b"2\t1\tgood.jpg\tcaf\xe9 $T$\tA\n"), []),
        "train.tsv:3: bytes that are not UTF-8",
        True,
    ),
    (
        "duplicate-id",
        lambda t: ("twitter-tsv", _tsv(t, "1\t1\tgood.jpg\tagain $T$\tA\n"), []),
        "train.tsv:3: duplicate index 1 (first on line 2)",
        False,
    ),
    (
        "empty-file",
        lambda t: ("twitter-tsv", _tsv(t, "").joinpath("train.tsv").write_text("") or t / "tw", []),
        "the file is empty",
        True,
    ),
    (
        "no-image-folder",
        lambda t: (
            "twitter-tsv",
            (t / "x.tsv").write_text(HEADER + GOOD_ROW) and t / "x.tsv",
            ["--split", "train"],
        ),
        "no image folder found",
        True,
    ),
    (
        "json-not-a-list",
        lambda t: ("clmlf-json", _json_file(t, "train.json", {"id": 1}), []),
        "expected a JSON array",
        True,
    ),
    (
        "json-syntax",
        lambda t: ("mulcot-json", _json_file(t, "test.json", None, raw='[{"id": 1,\n "text": }]'), []),
        "test.json:2: invalid JSON",
        True,
    ),
    (
        "clmlf-bad-label",
        lambda t: (
            "clmlf-json",
            _json_file(t, "train.json", [GOOD_CLMLF, {**GOOD_CLMLF, "id": "8", "emotion_label": 7}]),
            [],
        ),
        "train.json:2: field 'emotion_label': unknown label value 7",
        False,
    ),
    (
        "clmlf-missing-text",
        lambda t: (
            "clmlf-json",
            _json_file(t, "train.json", [GOOD_CLMLF, {"id": "9", "emotion_label": 1}]),
            [],
        ),
        "train.json:2: field 'text': item 2 has no 'text'",
        False,
    ),
    (
        "clmlf-duplicate-id",
        lambda t: ("clmlf-json", _json_file(t, "train.json", [GOOD_CLMLF, GOOD_CLMLF]), []),
        "train.json:2: duplicate id 7",
        False,
    ),
    (
        "release-cot-not-string",
        lambda t: (
            "mulcot-json",
            _json_file(t, "test.json", [GOOD_RELEASE, {**GOOD_RELEASE, "id": 8, "cot": 5}]),
            [],
        ),
        "test.json:2: field 'cot': item 2: 'cot' is not a string",
        False,
    ),
    (
        "release-unknown-label",
        lambda t: (
            "mulcot-json",
            _json_file(t, "test.json", [GOOD_RELEASE, {**GOOD_RELEASE, "id": 8, "label": "happy"}]),
            [],
        ),
        "test.json:2: field 'label': unknown label 'happy'",
        False,
    ),
    (
        "jsonl-bad-line",
        lambda t: (
            "jsonl",
            _json_file(t, "train.jsonl", None, raw='{"text": "ok", "image": "images/7.jpg"}\n{"text": oops}\n'),
            [],
        ),
        "train.jsonl:2: invalid JSON",
        False,
    ),
    (
        "jsonl-aspect-missing",
        lambda t: (
            "jsonl",
            _json_file(
                t,
                "train.jsonl",
                None,
                raw='{"text": "ok", "image": "images/7.jpg"}\n{"text": "I like $T$", "image": "images/7.jpg"}\n',
            ),
            [],
        ),
        "train.jsonl:2: field 'aspect': text has $T$ but no aspect",
        False,
    ),
    (
        "jsonl-image-not-string",
        lambda t: (
            "jsonl",
            _json_file(
                t,
                "train.jsonl",
                None,
                raw='{"text": "ok", "image": "images/7.jpg"}\n{"text": "fine", "image": 3}\n',
            ),
            [],
        ),
        "train.jsonl:2: field 'image': image is not a path string",
        False,
    ),
    ("mvsa-no-label-file", lambda t: ("mvsa-raw", t, []), "no labelResultAll.txt here", True),
    (
        "mvsa-bad-pair",
        lambda t: ("mvsa-raw", _mvsa(t, "2\thappy,positive\n", {"2": "x"}), []),
        "labelResultAll.txt:3: bad label pair 'happy,positive'",
        False,
    ),
    (
        "mvsa-missing-text",
        lambda t: ("mvsa-raw", _mvsa(t, "3\tneutral,neutral\n"), []),
        "labelResultAll.txt:3: text file data/3.txt not found",
        False,
    ),
    (
        "folder-without-splits",
        lambda t: ("twitter-tsv", (t / "empty").mkdir() or t / "empty", []),
        "no train/dev/test.tsv files found",
        True,
    ),
]


def _run(args, db: Path):
    return CliRunner().invoke(app, [*args, "--db", str(db)])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case):
    _, build, message, whole = case
    fmt, path, extra = build(tmp_path)
    db = tmp_path / "store.db"
    # The store already holds a dataset: none of this may touch it.
    with Store.open(db) as s:
        from mulcot.sample import SAMPLE_DIR

        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="keep", split="dev")
    before = dump(db)

    strict = _run(["data", "import", fmt, str(path), "--name", "bad", "--strict", *extra], db)
    assert strict.exit_code != 0
    assert message in strict.output, strict.output
    assert "Traceback" not in strict.output
    assert dump(db) == before

    default = _run(["data", "import", fmt, str(path), "--name", "bad", *extra], db)
    assert message in default.output, default.output
    assert "Traceback" not in default.output
    if whole:
        assert default.exit_code != 0
        assert dump(db) == before
    else:
        assert default.exit_code == 0, default.output
        with Store.open(db) as s:
            assert s.dataset_stats("bad")["samples"] == 1
            assert s.dataset_stats("keep")["samples"] == 12


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


def test_console_script_one_line_error(tmp_path):
    """The installed entry point: one line on stderr, exit code 2, no traceback."""
    exe = shutil.which("mulcot") or str(Path(sys.executable).parent / "mulcot")
    proc = subprocess.run(
        [exe, "data", "import", "twitter-tsv", str(tmp_path / "missing"), "--db", str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing: no such file or folder" in lines[0], proc.stderr
