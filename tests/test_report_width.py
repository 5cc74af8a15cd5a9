"""Reports fit 80 columns: the paper-layout tables fold long model names and keep every header whole; eval compare
and eval list keep run names whole and pasteable; every command's --help shows every option name whole."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

import mulcot.cli.run as run_cli
from mulcot.cli.eval_report import paper_table

HEADERS = ("Model", "Acc", "Sim", "METEOR", "BLEU", "ROUGE-L", "Dist-1", "Dist-2", "Cons.")
LONG = "runs/twitter2015-qwen2.5-vl-3b-student-distilled-tau2"


def _result(name: str, source: str, gold: bool = False) -> dict:
    reasoning = {"sim": 0.66, "meteor": 0.404, "bleu": 0.2863, "rouge_l": 0.4018, "distinct_1": 0.424,
                 "distinct_2": 0.7287}
    metrics = {"headline": {"accuracy": 1.0, "f1": 0.8345, "from": "label"}, "f1_reported": "macro_f1",
               "consistency": 0.9871, "gold_conditioned": gold, "reasoning": {"headline": reasoning}}
    return {"id": 12, "dataset": "twitter2015", "split": "test", "n": 1037, "source": source,
            "config": {"subject": {"name": name}}, "metrics": metrics}


def _render(renderable=None, fn=None) -> str:
    console = Console(width=80, file=io.StringIO(), record=True)
    if fn is not None:
        fn(console)
    else:
        console.print(renderable)
    return console.export_text()


def _model_column(text: str) -> str:
    """The Model column's text: each body line's first 'word' up to the numbers, joined (folded names rejoin)."""
    body = text.split("─" * 20, 1)[1].split("\n\n", 1)[0]
    return "".join(line[: line.index("100.")] if "100." in line else line for line in body.splitlines()).replace(
        " ", "").strip("─")


def test_paper_table_fits_80_columns_without_cutting(tmp_path):
    for with_ids in (False, True):
        text = _render(paper_table([_result("teacher", "teacher", gold=True), _result(LONG, "student")],
                                   "evaluation results", with_ids=with_ids))
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
        header = next(line for line in text.splitlines() if line.strip().startswith("Model"))
        assert header.split() == [*HEADERS[:2], "m-F1", *HEADERS[2:]]
        if with_ids:  # eval compare: ids in the table, the names whole below it (see the CLI test)
            assert _model_column(text).startswith("#12*#12All values".replace(" ", ""))
        else:
            assert LONG.replace(" ", "") in _model_column(text) and "teacher" in _model_column(text)
        assert "METEOR: nltk meteor_score" in " ".join(text.split())  # the legend under the table


def test_run_and_demo_final_table_fits_80_columns(monkeypatch):
    row = {"subject": "teacher", "accuracy": 1.0, "f1": 1.0, "consistency": None, "sim": 0.66, "meteor": 0.404,
           "bleu": 0.28, "rouge_l": 0.40, "distinct_1": 0.42, "distinct_2": 0.72, "gold_conditioned": True}
    result = SimpleNamespace(
        recipe="tiny", stages=[SimpleNamespace(stage="eval", status="done", seconds=1.0)],
        metrics=[row, dict(row, subject="assistant", gold_conditioned=False), dict(row, subject=LONG)],
        files={"student gguf": "/a/long/folder/" * 8 + "model.gguf"}, cost_usd=0.0, wall_s=3.0,
    )

    def show(console):
        monkeypatch.setattr(run_cli, "console", console)
        run_cli._print_result(result)

    text = _render(fn=show)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if line.strip().startswith("Model"))
    assert header.split() == [*HEADERS[:2], "F1", *HEADERS[2:]]
    assert "teacher*" in text and "assistant" in text and LONG.replace(" ", "") in _model_column(text)
    assert "F1: macro for aspect-level data, weighted otherwise" in " ".join(text.split())
    assert "/a/long/folder/" * 8 + "model.gguf" in "".join(text.split()).replace("│", "")  # folded, not cut


# ------------------------------------------------------------------------------------------- --help at 80 columns


def _commands(cmd, path=()):
    """(path, click command) of every command and group under ``cmd``."""
    yield path, cmd
    if hasattr(cmd, "list_commands"):
        ctx = cmd.context_class(cmd)
        for name in cmd.list_commands(ctx):
            yield from _commands(cmd.get_command(ctx, name), (*path, name))


def _all_commands():
    from typer.main import get_command

    from mulcot.cli import app

    return list(_commands(get_command(app)))


def test_every_help_fits_80_columns_without_a_cut_name():
    """Each command's --help at COLUMNS=80: no line wider, every option name and every word of its help and default
    whole on some line (wrapped at spaces, never folded), and no "…" that the help text does not have itself."""
    import re

    from typer.testing import CliRunner

    from mulcot.cli import app

    commands = _all_commands()
    assert len(commands) >= 20
    problems = []
    for path, cmd in commands:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        text = result.output
        name = " ".join(path) or "mulcot"
        if max(len(line) for line in text.splitlines()) > 80:
            problems.append(f"{name}: a line wider than 80")
        tokens = set(re.split(r"[\s│╭╮╰╯─]+", text))
        sources = [cmd.help or ""]
        if hasattr(cmd, "list_commands"):  # a group lists its commands' help
            ctx = cmd.context_class(cmd)
            sources += [cmd.get_command(ctx, sub).help or "" for sub in cmd.list_commands(ctx)]
        for p in cmd.params:
            sources.append(getattr(p, "help", None) or "")
            for opt in [*p.opts, *getattr(p, "secondary_opts", [])]:
                if opt.startswith("-") and opt not in tokens:
                    problems.append(f"{name}: option {opt} is cut")
            for word in (getattr(p, "help", None) or "").split():
                if word not in tokens:
                    problems.append(f"{name}: word {word!r} of {p.name}'s help is cut")
        if text.count("…") > sum(s.count("…") for s in sources):
            problems.append(f"{name}: something is cut with …")
    assert not problems, "\n".join(problems)


def test_eval_compare_and_list_keep_names_whole_at_80_columns(tmp_path):
    """Long run names and paths in `eval compare` and `eval list`: the table fits 80 columns, and each name is on one
    line of output, whole (the terminal soft-wraps it; copying it back gives the name)."""
    from typer.testing import CliRunner

    from mulcot.cli import app
    from mulcot.store import Store

    db = tmp_path / "m.db"
    names = [LONG, "runs/" + "an-even-longer-student-run-name-with-many-parts-" * 2 + "end"]
    with Store.open(db) as s:
        s.upsert_dataset("twitter2015", task="masc", format="twitter-tsv", source="x", images_root=None,
                         has_images=False)
        ids = [s.add_eval_result(dataset="twitter2015", split="test", n=1037, source="student", run_id=name,
                                 metrics=_result(name, "student")["metrics"],
                                 config={"subject": {"name": name}, "samples_sha256": "abc"}) for name in names]
    for args in (["eval", "compare", *map(str, ids), "--no-paired"], ["eval", "list"]):
        result = CliRunner().invoke(app, [*args, "--db", str(db)], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert "…" not in result.stdout
        for rid, name in zip(ids, names, strict=True):
            assert any(line.startswith(f"#{rid} {name} (student) · twitter2015/test · n=1037") for line in lines)
        table = [line for line in lines if not line.startswith("#")]
        assert max(len(line) for line in table) <= 80, table
