"""Every training knob is declared once (mulcot.train.config) and reaches the CLI, the recipes and the pipeline."""

from __future__ import annotations

from dataclasses import fields

import pytest
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.core.settings import config_fields
from mulcot.pipeline import Pipeline
from mulcot.pipeline.recipes import ModelSection, RecipeError, StudentSection, TrainingSection, parse_recipe
from mulcot.store import Store
from mulcot.train.config import DistillConfig, TrainConfig

RECIPE = """
name = "r"
[dataset]
name = "d"
format = "jsonl"
path = "x.jsonl"
[assistant]
model = "m"
lora_r = 8
[student]
model = "s"
top_k = 5
[training]
warmup_steps = 3
lr_factor = 0.25
single_pass = false
task_weights = [0.5, 0.5]
"""


@pytest.mark.parametrize(("command", "cls"), [("train-assistant", TrainConfig), ("distill", DistillConfig)])
def test_every_knob_is_a_flag(command, cls):
    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "240"}).output
    for f in config_fields(cls, cli=True):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert f.metadata["help"].split()[0] in text, f.name
    assert "--no-dev" in text and "--dataset" not in text  # the none flag; fields set by the command stay off


def test_every_knob_is_a_recipe_key():
    keys = {f.name for f in fields(TrainingSection)}
    assert {f.name for f in config_fields(TrainConfig, section="training")} == keys
    assert {f.name for f in config_fields(TrainConfig, section="model")} | {"model"} == {f.name for f in
                                                                                         fields(ModelSection)}
    assert {f.name for f in config_fields(DistillConfig, section="student")} <= {f.name for f in fields(StudentSection)}


def test_recipe_values_reach_the_trainer_config(tmp_path):
    recipe = parse_recipe(RECIPE, "r.toml")
    with Store.open(tmp_path / "m.db") as store:
        pipe = Pipeline(store, recipe)
        asst = pipe._train_config(TrainConfig, "train-assistant", recipe.assistant)
        stud = pipe._train_config(DistillConfig, "distill", recipe.student, assistant="a")
    assert (asst.warmup_steps, asst.lr_factor, asst.single_pass, asst.task_weights) == (3, 0.25, False, (0.5, 0.5))
    assert asst.lora_r == 8 and stud.lora_r == 16 and stud.top_k == 5 and stud.warmup_steps == 3


def test_recipe_checks_come_from_the_config():
    with pytest.raises(RecipeError, match="'student.soft_labels' is 'disk'; allowed: cache, online"):
        parse_recipe(RECIPE.replace("top_k = 5", 'soft_labels = "disk"'), "r.toml")
    with pytest.raises(RecipeError, match="'training.batch_size' must be at least 1"):
        parse_recipe(RECIPE.replace("warmup_steps = 3", "batch_size = 0"), "r.toml")
    with pytest.raises(RecipeError, match="unknown key 'training.warmup'"):
        parse_recipe(RECIPE.replace("warmup_steps = 3", "warmup = 3"), "r.toml")
