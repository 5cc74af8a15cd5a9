"""`mulcot annotate --captions` against a real HTTP server on 127.0.0.1 with scripted answers."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from typer.testing import CliRunner

from mulcot.annotate.captions import CaptionConfig, TeacherCannotSeeImages, caption_images, clean_caption
from mulcot.annotate.chat_server import ChatServer, Reply, has_image, prompt_text
from mulcot.cli import app
from mulcot.core.prompts import CAPTION_TEMPLATE, caption_prompt
from mulcot.datasets import import_dataset
from mulcot.errors import MulcotError
from mulcot.sample import SAMPLE_DIR
from mulcot.store import Store

# what OpenAI answers when a text-only model is sent an image part
NO_VISION = "Invalid content type. image_url is only supported by certain models."


class Captions:
    """Scripted teacher: a numbered caption per request, after checking the request is a caption request."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> Reply:
        assert has_image(body) and prompt_text(body) == CAPTION_TEMPLATE
        with self.lock:
            self.n += 1
            n = self.n
        return Reply(text=f'"A photo, number {n}, of people on a street."\nSecond line ignored.')


@pytest.fixture
def store(tmp_path):
    """The embedded sample (60 posts, 60 images) plus a second aspect of its first training image."""
    s = Store.open(tmp_path / "mulcot.db")
    import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
    header, first = (SAMPLE_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()[:2]
    index, label, image, text, aspect = first.split("\t")
    extra = tmp_path / "extra" / "train.tsv"
    extra.parent.mkdir()
    extra.write_text(f"{header}\n9{index}\t{label}\t{image}\t{text}\tanother aspect\n", encoding="utf-8")
    import_dataset(s, "twitter-tsv", extra, name="t15", split="train", images=SAMPLE_DIR / "images")
    yield s
    s.close()


def _cfg(server: ChatServer, **kw) -> CaptionConfig:
    from mulcot.core.client import TeacherConfig

    teacher = TeacherConfig(model="gpt-4o-mini", base_url=server.base_url, api_key="x", backoff_base_s=0.01,
                            http_retries=2, max_tokens=100)
    return CaptionConfig(dataset="t15", teacher=teacher, concurrency=kw.pop("concurrency", 4), **kw)


def _images(store: Store) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for split in store.splits("t15"):
        for s in store.samples("t15", split):
            groups.setdefault(s["image_sha256"], []).append(s)
    return groups


def test_every_image_once_with_provenance_then_only_the_missing(store):
    groups = _images(store)
    assert len(groups) < sum(len(g) for g in groups.values())  # some images have several aspects
    with ChatServer(Captions()) as server:
        summary = caption_images(store, _cfg(server))
        assert len(server.requests) == len(groups) == summary.captioned == summary.requests == summary.images
    assert summary.failed == 0 and summary.samples_captioned == summary.samples_with_image == 61
    assert summary.tokens_in > 0 and summary.cost_usd > 0
    version = caption_prompt().version
    captions = Counter()
    for group in _images(store).values():
        metas = [s["meta"] for s in group]
        assert len({m["caption"] for m in metas}) == 1  # one caption per image, on every sample showing it
        caption = metas[0]["caption"]
        assert caption.startswith("A photo, number ") and caption.endswith("street.")  # first line, unquoted
        captions[caption] += 1
        source = metas[0]["caption_source"]
        assert source["model"] == "gpt-4o-mini" and source["prompt_version"] == version
        assert source["tokens_in"] > 0 and source["cost_usd"] > 0 and source["run"] == summary.run_id
    assert len(captions) == len(groups)
    run = store.get_run(summary.run_id)
    assert run["kind"] == "captions" and run["status"] == "done"
    assert run["config"]["prompts"] == {"caption": version} and "api_key" not in run["config"]["teacher"]
    assert run["metrics"]["captioned"] == len(groups)

    # a rerun asks only for what is missing: one image alone loses its caption, one sample of a shared image too
    single = next(g[0] for g in groups.values() if len(g) == 1)
    shared = next(g[0] for g in groups.values() if len(g) > 1)
    store.set_caption(single["id"], None)
    store.set_caption(shared["id"], None)
    assert "caption_source" not in store.get_sample(single["id"])["meta"]
    with ChatServer(Captions()) as server:
        again = caption_images(store, _cfg(server))
        assert len(server.requests) == 1
    assert again.captioned == 1 and again.reused == 1 and again.skipped_done == len(groups) - 2
    assert store.get_sample(shared["id"])["meta"]["caption"] == _images(store)[shared["image_sha256"]][1]["meta"][
        "caption"
    ]
    assert again.samples_captioned == 61


def test_budget_stops_then_resumes(store):
    groups = _images(store)
    with ChatServer(Captions()) as server:
        cfg = _cfg(server, concurrency=1, budget_usd=0.01)
        cfg.teacher.price = (10.0, 10.0)  # USD per 1M tokens: ~0.001 per request
        first = caption_images(store, cfg)
        assert first.stopped == "budget" and 0 < first.cost_usd <= 0.01 and 0 < first.captioned < len(groups)
        assert store.get_run(first.run_id)["status"] == "stopped"
        cfg.budget_usd = None
        rest = caption_images(store, cfg)
        assert len(server.requests) == len(groups)
    assert first.captioned + rest.captioned == len(groups) and rest.samples_captioned == 61


def test_teacher_that_cannot_see_images_is_one_line(store, tmp_path):
    with ChatServer(lambda body: Reply(status=400, text=NO_VISION)) as server:
        with pytest.raises(TeacherCannotSeeImages) as err:
            caption_images(store, _cfg(server))
        assert len(server.requests) == 1  # stopped at the first request, not once per image
        message = str(err.value)
        assert "cannot see images" in message and "image_url" in message and "\n" not in message
        assert "nothing stored" in message
        assert store.get_run("captions-t15-gpt-4o-mini")["status"] == "failed"
        r = CliRunner().invoke(app, ["annotate", "t15", "--captions", "--teacher", "text-model", "--base-url",
                                     server.base_url, "--db", str(tmp_path / "mulcot.db")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "cannot see images" in r.output
    assert not any(s["meta"].get("caption") for s in store.samples("t15"))


def test_other_failures_stop_at_the_first_request_else_are_listed(store):
    with ChatServer(lambda body: Reply(status=404, text="The model `nope` does not exist")) as server:
        with pytest.raises(MulcotError) as err:
            caption_images(store, _cfg(server, limit=3))
        assert len(server.requests) == 1
    message = str(err.value)
    assert "first caption request failed" in message and "does not exist" in message and "\n" not in message
    assert "cannot see images" not in message

    first = Captions()

    def later_fail(body: dict) -> Reply:
        return first(body) if first.n == 0 else Reply(status=404, text="The model `nope` does not exist")

    with ChatServer(later_fail) as server:
        summary = caption_images(store, _cfg(server, limit=3))
    assert summary.captioned == 1 and summary.failed == 2 and len(summary.failures) == 2
    assert "does not exist" in summary.failures[0] and "cannot see images" not in summary.failures[0]
    assert store.get_run(summary.run_id)["status"] == "done"


def test_cli_json_split_and_bad_input(store, tmp_path):
    db = str(tmp_path / "mulcot.db")
    with ChatServer(Captions()) as server:
        r = CliRunner().invoke(app, ["annotate", "t15", "--captions", "--split", "dev", "--teacher", "gpt-4o-mini",
                                     "--base-url", server.base_url, "--db", db, "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        dev_images = {s["image_sha256"] for s in store.samples("t15", "dev")}
        assert out["captioned"] == len(dev_images) == len(server.requests)
        assert out["samples_captioned"] == len(store.samples("t15", "dev"))
        assert not any(s["meta"].get("caption") for s in store.samples("t15", "train"))
        r = CliRunner().invoke(app, ["annotate", "t15", "--captions", "--split", "val2", "--teacher", "m",
                                     "--base-url", server.base_url, "--db", db])
        assert r.exit_code != 0 and "has no split 'val2'" in r.output
    with Store.open(tmp_path / "text.db") as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15", no_images=True)
        with pytest.raises(MulcotError, match="without images"):
            caption_images(s, CaptionConfig(dataset="t15", teacher=_cfg(server).teacher))


def test_clean_caption():
    assert clean_caption('  "A dog on a beach."  \n\nMore.') == "A dog on a beach."
    assert clean_caption("Caption: A  red\tcar.") == "A red car."
    assert clean_caption("\n \n") == ""
    assert len(clean_caption("word " * 200)) <= 400
