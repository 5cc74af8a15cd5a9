"""The ``mulcot`` command: a thin Typer shell over the library."""

from __future__ import annotations

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from mulcot import __version__
from mulcot.cli import annotate, data, distill, export, judge, models, predict, run, train, tui
from mulcot.cli import eval as eval_cli
from mulcot.cli.common import err_console
from mulcot.errors import MulcotError
from mulcot.train import distributed as dist


class MulcotGroup(TyperGroup):
    """Root group: a user error becomes one line on stderr and a non-zero exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MulcotError as exc:
            message = str(exc)
            if not dist.is_main():  # under a launcher: an error every rank shares is the main process's to report
                if isinstance(exc, dist.RankError):
                    raise typer.Exit(exc.exit_code) from None
                message = f"rank {dist.rank()}: {message}"
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            from mulcot.store.runs import last_interrupt

            # the interrupted run says how it resumes (training: with --resume); SIGTERM (kill, timeout) as Ctrl-C
            hint, sigterm = last_interrupt()
            if dist.is_main():
                err_console.print(f"interrupted{' (SIGTERM)' if sigterm else ''}" + (f": {hint}" if hint else ""),
                                  highlight=False)
            raise typer.Exit(143 if sigterm else 130) from None


app = typer.Typer(
    name="mulcot",
    cls=MulcotGroup,
    help="Distil a multimodal teacher's sentiment reasoning into a small student that explains and classifies "
    "text+image posts (MulCoT-RD).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# in pipeline order: data, the six stages, then the whole pipeline and the tools
app.add_typer(data.app, name="data")
app.command("annotate")(annotate.annotate)
app.command("train-assistant")(train.train_assistant)
app.command("expand")(distill.expand)
app.command("distill")(distill.distill)
app.command("dpo")(train.dpo)
app.command("grpo")(train.grpo)
app.add_typer(eval_cli.app, name="eval")
app.command("judge")(judge.judge)
app.command("export")(export.export)
app.command("predict")(predict.predict)
app.command("run")(run.run)
app.command("demo")(run.demo)
app.command("tui")(tui.tui)
app.command("doctor")(run.doctor)
app.add_typer(models.app, name="models")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mulcot {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """mulcot: teacher → assistant → student reasoning distillation for multimodal sentiment."""


def main() -> None:
    """Console entry point."""
    app()
