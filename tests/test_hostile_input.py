"""Hostile and faulty inputs, each through the real command line: one line of error, a non-zero exit where nothing
was done, the store intact (``PRAGMA integrity_check`` ok, its row counts unchanged), nothing read or written outside
the folders the command was given, and each case under 1 s and 200 MB.

Reads and writes are watched with an audit hook (``open``, ``os.listdir``, ``os.scandir``, ``sqlite3.connect``);
memory as the rise of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``). The time is
the command's own: libraries a command imports on first use (openai: about 1 s) are imported before it runs."""

from __future__ import annotations

import re
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mulcot.annotate.chat_server import ChatServer, Reply
from mulcot.cli import app
from mulcot.core.reasoning import Reasoning
from mulcot.datasets import import_dataset
from mulcot.sample import SAMPLE_DIR
from mulcot.store import Store

MAX_SECONDS = 1.0
MAX_MB = 200

# -------------------------------------------------------------------------------------------- the watch on files

_SEEN: list[tuple[str, str]] = []  # (path, mode) while a case runs
_WATCHING = [False]


def _audit(event: str, args: tuple) -> None:
    if not _WATCHING[0]:
        return
    if event == "open" and isinstance(args[0], (str, bytes, Path)):
        path = args[0].decode(errors="replace") if isinstance(args[0], bytes) else str(args[0])
        _SEEN.append((path, str(args[1] or "r")))
    elif event in ("os.listdir", "os.scandir") and isinstance(args[0], (str, bytes, Path)):
        path = args[0].decode(errors="replace") if isinstance(args[0], bytes) else str(args[0])
        _SEEN.append((path, "list"))
    elif event == "sqlite3.connect" and args and isinstance(args[0], (str, bytes, Path)):
        path = args[0].decode(errors="replace") if isinstance(args[0], bytes) else str(args[0])
        _SEEN.append((path, "sqlite"))


sys.addaudithook(_audit)


def _peak_kb() -> tuple[int, int]:
    """(peak resident set, resident set) of this process in kB."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmHWM", "VmRSS"))  # type: ignore


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------- the harness


@dataclass
class Outcome:
    exit_code: int
    lines: list[str]
    seconds: float
    peak_mb: float | None
    outside: list[str] = field(default_factory=list)


def _counts(db: Path) -> dict[str, int]:
    with Store(db, migrate=False) as s:
        tables = [r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'samples_fts%'").fetchall()]
        return {t: s.db.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0] for t in tables}


def _integrity(db: Path) -> str:
    with Store(db, migrate=False) as s:
        return s.db.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A store that already holds a dataset (the embedded sample): none of the cases may touch it."""
    path = tmp_path_factory.mktemp("template") / "mulcot.db"
    with Store.open(path) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="keep", split="dev")
    return path


@pytest.fixture
def world(tmp_path, template_db):
    """``(root, db)``: a private copy of the store under root/store, and bait files beside the case's folders
    that no case may read."""
    (tmp_path / "store").mkdir()
    db = tmp_path / "store" / "mulcot.db"
    shutil.copy(template_db, db)
    (tmp_path / "secret.txt").write_text("a private note\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.txt").write_text("not yours\n")
    return tmp_path, db


def _tree(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if any(p == s or s in p.parents for s in skip):
            continue
        st = p.lstat()
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def run_case(root: Path, db: Path, args: list[str], named: list[Path], env: dict[str, str] | None = None) -> Outcome:
    """Run ``mulcot ARGS --db DB``, watching what it opens under ``root`` beyond ``named`` and the store's folder."""
    allowed = [p.resolve() for p in [*named, db.parent]]
    before = _tree(root, allowed)
    _SEEN.clear()
    measured = _reset_peak()
    base = _peak_kb()[1]
    runner = CliRunner()
    _WATCHING[0] = True
    start = time.perf_counter()
    try:
        result = runner.invoke(app, [*args, "--db", str(db)], env=env)
    finally:
        seconds = time.perf_counter() - start
        _WATCHING[0] = False
    peak = (_peak_kb()[0] - base) / 1024 if measured else None
    root_r = root.resolve()
    outside = []
    for path, mode in _SEEN:
        p = Path(path)
        p = (p if p.is_absolute() else Path.cwd() / p).resolve()
        writes = mode not in ("list", "sqlite") and any(c in mode for c in "wax+")
        inside_root = p == root_r or root_r in p.parents
        if any(p == a or a in p.parents for a in allowed):
            continue
        if inside_root or (writes and not str(p).startswith("/dev/")):
            outside.append(f"{mode} {p}")
    if _tree(root, allowed) != before:
        outside.append("files changed outside the named folders")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Outcome(result.exit_code, result.output.strip().splitlines(), seconds, peak, outside)


def check_refused(outcome: Outcome, message: str) -> None:
    """One line naming the problem, a non-zero exit, nothing outside, fast and small."""
    assert outcome.exit_code != 0, outcome.lines
    assert len(outcome.lines) == 1 and message in outcome.lines[0], outcome.lines
    assert "Traceback" not in outcome.lines[0]
    _check_bounds(outcome)


def _check_bounds(outcome: Outcome) -> None:
    assert not outcome.outside, outcome.outside
    assert outcome.seconds < MAX_SECONDS, f"took {outcome.seconds:.2f} s"
    if outcome.peak_mb is not None:
        assert outcome.peak_mb < MAX_MB, f"peak resident set rose by {outcome.peak_mb:.0f} MB"


# ----------------------------------------------------------------------------------------------------- inputs


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (200, 30, 30)).save(path, "JPEG")


def bomb_png(path: Path, side: int) -> Path:
    """A valid 1-bit PNG of ``side`` x ``side`` pixels, all black: a few KB on disk, ``side``² pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + -(-side // 8))
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.compress(row * (side % 500))
    body += packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def mvsa_folder(root: Path, label_lines: str) -> Path:
    """An MVSA archive whose label file lists ``label_lines`` only (ids to refuse)."""
    folder = root / "mvsa"
    (folder / "data").mkdir(parents=True)
    _jpeg(folder / "data" / "1.jpg")
    (folder / "data" / "1.txt").write_text("a good post")
    (folder / "labelResultAll.txt").write_text("ID\ttext,image\n" + label_lines)
    return folder


def jsonl_folder(root: Path, image_name: str) -> Path:
    folder = root / "js"
    folder.mkdir()
    (folder / "train.jsonl").write_text(f'{{"text": "a post", "label": "positive", "image": "{image_name}"}}\n')
    return folder


def gguf_with_dims(path: Path, n_dims: int) -> Path:
    """A GGUF header (version 3, one key, one tensor) whose tensor claims ``n_dims`` dimensions of size 2**40."""

    def string(s: bytes) -> bytes:
        return struct.pack("<Q", len(s)) + s

    kv = string(b"general.architecture") + struct.pack("<I", 8) + string(b"llama")
    tensor = string(b"blk.0.attn_q.weight") + struct.pack("<I", n_dims) + struct.pack("<Q", 1 << 40) * n_dims
    tensor += struct.pack("<IQ", 0, 0)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + tensor + b"\x00" * 64)
    return path


def _mvsa_case(label_line: str) -> Callable[[Path], tuple[list[str], list[Path]]]:
    def build(root: Path) -> tuple[list[str], list[Path]]:
        folder = mvsa_folder(root, label_line.replace("OUTSIDE", str((root / "outside" / "x").resolve())))
        return ["data", "import", "mvsa-raw", str(folder), "--no-images", "--name", "m"], [folder]

    return build


def _bomb_case(name: str, side: int) -> Callable[[Path], tuple[list[str], list[Path]]]:
    def build(root: Path) -> tuple[list[str], list[Path]]:
        folder = jsonl_folder(root, name)
        bomb_png(folder / name, side)
        return ["data", "import", "jsonl", str(folder), "--name", "j"], [folder]

    return build


def _gguf_case(root: Path) -> tuple[list[str], list[Path]]:
    folder = _mkdir(root / "model")  # the projector is looked for beside a text GGUF: its folder is named too
    path = gguf_with_dims(folder / "evil.gguf", 80_000)
    return ["predict", "--gguf", str(path), "--text", "hi"], [folder]


# (id, build(root) -> (args, named folders), message)
Case = tuple[str, Callable[[Path], tuple[list[str], list[Path]]], str]

CASES: list[Case] = [
    ("mvsa-id-climbs-out", _mvsa_case("../../secret\tpositive,positive\n"),
     "id '../../secret' is not a plain file name"),
    ("mvsa-id-absolute", _mvsa_case("OUTSIDE\tpositive,positive\n"),
     "is not a plain file name: ids name files in data/"),
    ("mvsa-id-with-folder", _mvsa_case("sub/1\tpositive,positive\n"), "id 'sub/1' is not a plain file name"),
    ("decompression-bomb-png", _bomb_case("bomb.png", 20000),
     "image 'bomb.png' is too large to decode safely (400,000,000 pixels"),
    ("decompression-bomb-warning-size", _bomb_case("big.png", 10000),
     "image 'big.png' is too large to decode safely (100,000,000 pixels"),
    ("gguf-too-many-dimensions", _gguf_case, "has 80000 dimensions (llama.cpp allows at most 4)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_in_one_line(world, case):
    root, db = world
    _, build, message = case
    args, named = build(root)
    before = _counts(db)
    outcome = run_case(root, db, args, named)
    check_refused(outcome, message)
    assert _integrity(db) == "ok" and _counts(db) == before


def test_decompression_bomb_is_a_problem_row_not_the_end_of_an_import(world):
    """Without --strict the other rows are imported and the bomb is reported as its row; with --strict nothing."""
    root, db = world
    folder = root / "js"
    folder.mkdir()
    _jpeg(folder / "ok.jpg")
    bomb_png(folder / "bomb.png", 20000)
    (folder / "train.jsonl").write_text('{"text": "fine", "label": "positive", "image": "ok.jpg"}\n'
                                        '{"text": "boom", "label": "negative", "image": "bomb.png"}\n')
    before = _counts(db)
    strict = run_case(root, db, ["data", "import", "jsonl", str(folder), "--name", "j", "--strict"], [folder])
    check_refused(strict, "train.jsonl:2: field 'image': image 'bomb.png' is too large to decode safely")
    assert _counts(db) == before
    lenient = run_case(root, db, ["data", "import", "jsonl", str(folder), "--name", "j"], [folder])
    assert lenient.exit_code == 0, lenient.lines
    assert any("skipped" in line and "bomb.png' is too large" in line for line in lenient.lines), lenient.lines
    _check_bounds(lenient)
    after = _counts(db)
    assert after["samples"] == before["samples"] + 1 and _integrity(db) == "ok"


def test_mvsa_good_rows_still_import_beside_a_hostile_id(world):
    root, db = world
    folder = mvsa_folder(root, "1\tpositive,positive\n../../secret\tnegative,negative\n")
    outcome = run_case(root, db, ["data", "import", "mvsa-raw", str(folder), "--name", "m"], [folder])
    assert outcome.exit_code == 0, outcome.lines
    assert any("labelResultAll.txt:3: field 'id'" in line for line in outcome.lines), outcome.lines
    _check_bounds(outcome)
    with Store(db, migrate=False) as s:
        assert [r["key"] for r in s.samples("m")] == ["1"]


def test_nul_byte_in_tui_search_is_dropped(world):
    """A NUL typed or pasted into the TUI's search is dropped, not an SQLite error; the store is only read."""
    import asyncio

    from mulcot.tui import ChainBrowser, SampleTable

    root, db = world
    before = _counts(db)

    async def go() -> list[int]:
        app = ChainBrowser(db)
        rows = []
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            for query in ("\x00", "tod\x00ay", "\x00\x00 OR", "-\x00"):
                start = time.perf_counter()
                app.apply_filters(search=query)
                await pilot.pause()
                assert time.perf_counter() - start < MAX_SECONDS
                rows.append(app.query_one(SampleTable).row_count)
        return rows

    rows = asyncio.run(go())
    with Store(db, migrate=False) as s:
        assert rows[1] == s.browse_count(search="today") > 0
    assert rows[0] == 0 and _integrity(db) == "ok" and _counts(db) == before


# ------------------------------------------------------------------------------------------------------ secrets

PASSWORD = "PASSWORD-in-the-url-123"
OPENAI_KEY = "sk-test-openai-key-never-elsewhere-42"
OTHER_TOKEN = "ghp_test-token-for-something-else-7"


class _Teacher:
    """A teacher that answers every post with a valid chain (and records the requests: the server does)."""

    def __call__(self, body: dict) -> Reply:
        return Reply(text=Reasoning("t", "i", "c", "f", "positive").to_text())


@pytest.fixture
def teacher_server():
    import openai  # noqa: F401  (imported once per process, as any command's first use would: not the case's time)

    import mulcot.annotate.live  # noqa: F401

    with ChatServer(_Teacher()) as server:
        yield server


def _annotate(server_url: str, *extra: str) -> list[str]:
    return ["annotate", "keep", "--split", "dev", "--limit", "1", "--stage", "predict", "--teacher", "m",
            "--base-url", server_url, "--http-retries", "0", *extra]


def _store_text(db: Path) -> str:
    with Store(db, migrate=False) as s:
        return "\n".join(s.db.conn.iterdump())


def test_base_url_credentials_are_used_but_never_stored(world, teacher_server):
    root, db = world
    url = teacher_server.base_url.replace("http://", f"http://user:{PASSWORD}@")
    outcome = run_case(root, db, [*_annotate(url), "--json"], [])
    assert outcome.exit_code == 0, outcome.lines
    _check_bounds(outcome)
    assert teacher_server.requests[0]["headers"]["authorization"].startswith("Basic ")  # the proxy gets them
    assert PASSWORD not in _store_text(db) and PASSWORD not in "\n".join(outcome.lines)
    with Store(db, migrate=False) as s:
        run = next(r for r in s.list_runs() if r["kind"] == "annotate")
        assert run["config"]["teacher"]["base_url"] == teacher_server.base_url
    assert _integrity(db) == "ok"


def test_openai_key_goes_only_to_openai(world, teacher_server):
    """OPENAI_API_KEY set, another server named: it gets no key (local servers take any); a key variable named for
    it goes there."""
    root, db = world
    env = {"OPENAI_API_KEY": OPENAI_KEY, "MY_SERVER_API_KEY": "sk-for-my-server"}
    outcome = run_case(root, db, [*_annotate(teacher_server.base_url), "--json"], [], env=env)
    assert outcome.exit_code == 0, outcome.lines
    _check_bounds(outcome)
    assert teacher_server.requests[-1]["headers"]["authorization"] == "Bearer not-needed"
    args = _annotate(teacher_server.base_url, "--api-key-env", "MY_SERVER_API_KEY", "--json")
    args[args.index("m")] = "m2"  # another teacher: the sample is asked again
    outcome = run_case(root, db, args, [], env=env)
    assert outcome.exit_code == 0, outcome.lines
    assert teacher_server.requests[-1]["headers"]["authorization"] == "Bearer sk-for-my-server"
    assert OPENAI_KEY not in str(teacher_server.requests) and OPENAI_KEY not in _store_text(db)


SECRET_CASES = [
    ("query-key-in-base-url", ["?api-key=sk-query-secret-9"], {}, "--base-url carries a 'api-key' query parameter"),
    ("openai-key-named-for-another-host", ["", "--api-key-env", "OPENAI_API_KEY"], {"OPENAI_API_KEY": OPENAI_KEY},
     "OPENAI_API_KEY goes only to the OpenAI API (api.openai.com), not to 127.0.0.1"),
    ("unrelated-token-to-a-server", ["", "--api-key-env", "GITHUB_TOKEN"], {"GITHUB_TOKEN": OTHER_TOKEN},
     "GITHUB_TOKEN is not sent to 127.0.0.1: only a variable named like an API key"),
    ("cloud-secret-to-a-server", ["", "--api-key-env", "AWS_SECRET_ACCESS_KEY"],
     {"AWS_SECRET_ACCESS_KEY": OTHER_TOKEN}, "AWS_SECRET_ACCESS_KEY is not sent to 127.0.0.1"),
]


@pytest.mark.parametrize("case", SECRET_CASES, ids=[c[0] for c in SECRET_CASES])
def test_a_secret_that_would_leak_is_refused_before_any_request(world, teacher_server, case):
    root, db = world
    _, (suffix, *extra), env, message = case
    before = _counts(db)
    outcome = run_case(root, db, _annotate(teacher_server.base_url + suffix, *extra), [], env=env)
    check_refused(outcome, message)
    assert teacher_server.requests == [] and _counts(db) == before and _integrity(db) == "ok"
    for secret in ("sk-query-secret-9", OPENAI_KEY, OTHER_TOKEN):
        assert secret not in outcome.lines[0]


def test_recipe_cannot_send_a_foreign_token_or_carry_a_credential(world):
    root, db = world
    from mulcot.pipeline.recipes import bundled_recipe

    base = bundled_recipe("tiny-cpu").read_text()
    cases = (
        ('replay = "@sample"', 'base_url = "http://127.0.0.1:9/v1"\napi_key_env = "GITHUB_TOKEN"',
         "'teacher.api_key_env': GITHUB_TOKEN is not sent to 127.0.0.1"),
        ('replay = "@sample"', 'base_url = "https://u:pw-secret@example.org/v1"',
         "'teacher.base_url' carries credentials (user:password@)"),
    )
    for i, (old, new, message) in enumerate(cases):
        folder = _mkdir(root / f"recipe{i}")
        (folder / "r.toml").write_text(base.replace(old, new))
        before = _counts(db)
        outcome = run_case(root, db, ["run", str(folder / "r.toml")], [folder], env={"GITHUB_TOKEN": OTHER_TOKEN})
        check_refused(outcome, message)
        assert "pw-secret" not in outcome.lines[0] and _counts(db) == before


def test_distill_server_url_with_a_query_key_is_refused(world):
    root, db = world
    before = _counts(db)
    outcome = run_case(root, db, ["distill", "keep", "--assistant", "asst", "--student", "m", "--soft-labels",
                                  "server", "--server", "http://127.0.0.1:9/v1?api_key=sk-distill-secret",
                                  "--served-model", "a"], [])
    check_refused(outcome, "--server must not carry credentials (it has a 'api_key' query parameter")
    assert "sk-distill-secret" not in outcome.lines[0] and _counts(db) == before


def test_public_url_keeps_no_credential():
    from mulcot.core.client import TeacherConfig
    from mulcot.core.keys import public_url, url_secrets

    assert public_url("http://u:pw@10.0.0.2:8000/v1?api-version=2024-06&api-key=sk-x") == (
        "http://10.0.0.2:8000/v1?api-version=2024-06"
    )
    assert public_url("http://u:pw@host:notaport/v1?key=sk") == "host:notaport/v1"
    assert url_secrets("https://h/v1?access_token=a&sig=b&api-version=1") == [
        "a 'access_token' query parameter", "a 'sig' query parameter"
    ]
    cfg = TeacherConfig(model="m", base_url="http://u:pw-9@h:1/v1?token=t-9", api_key="sk-direct")
    public = str(cfg.public())
    assert "pw-9" not in public and "sk-direct" not in public and "t-9" not in public


# ---------------------------------------------------------------------------------------- slow or silent failure


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_annotate_where_nothing_listens_fails_in_seconds(world, teacher_server):
    """No server at the port: one line naming the URL, exit 1, no run recorded (not 87 s of retries, exit 0)."""
    root, db = world
    before = _counts(db)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    outcome = run_case(root, db, ["annotate", "keep", "--split", "dev", "--teacher", "m", "--base-url", url], [])
    check_refused(outcome, f"nothing answers at {url}: connection failed")
    assert _counts(db) == before and _integrity(db) == "ok"


def test_annotate_whose_every_request_is_dropped_stops_and_fails(world):
    """The server lists its models but drops every completion: the run stops after a few requests in a row got no
    answer, and the command says so in one line with exit 1; the summary counts the retries each failure made."""
    root, db = world
    with ChatServer(lambda body: Reply(drop=True)) as server:
        outcome = run_case(root, db, ["annotate", "keep", "--split", "dev", "--teacher", "m", "--base-url",
                                      server.base_url, "--http-retries", "0", "--concurrency", "1"], [])
        check_refused(outcome, "no request got an answer from the teacher (3 tried; last: sample")
        assert len(server.requests) == 3
    assert _integrity(db) == "ok"


def test_hub_id_without_network_fails_fast_with_the_real_reason(world, monkeypatch):
    """A hub id, HF_HUB_OFFLINE unset, and a Hub that does not answer (here: an endpoint where nothing listens):
    one line saying so in seconds, not huggingface_hub's ~25 s of "Retrying in 8s", and no empty training bar."""
    import huggingface_hub.constants as hub_constants

    import mulcot.train.assistant  # noqa: F401  (the training stack: imported once per process, not the case's time)
    from mulcot.pipeline.demo import run_demo

    root, db = world
    with Store.open(db) as s:  # teacher chains (D_t) to train on: the model is what fails
        run_demo(s)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    before = _counts(db)
    args = ["train-assistant", "twitter2015-sample", "--model", "example-org/no-such-model", "--runs-dir",
            str(root / "runs")]
    outcome = run_case(root, db, args, [root / "runs"])
    check_refused(outcome, "cannot find model 'example-org/no-such-model': no such local folder, and the Hugging "
                  "Face Hub cannot be reached (127.0.0.1: Connection refused)")
    assert _counts(db) == before and not (root / "runs").exists()
