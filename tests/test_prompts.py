import pytest

from mulcot.core.prompts import PROMPT_NAMES, get_prompt, prompt_versions
from mulcot.core.reasoning import FIELDS
from mulcot.errors import MulcotError


def test_versions_stable_and_distinct():
    v = prompt_versions()
    assert len(v) == 8 and len(set(v.values())) == 8
    assert v == prompt_versions()
    assert all(len(x) == 12 for x in v.values())


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_masc_prompts_name_the_aspect(name):
    text = get_prompt(name, "masc").render("I love $T$ {label}", "Obama", "positive")
    assert "Obama" in text and "I love $T$ {label}" in text


def test_teacher_prompts_have_definitions_and_format():
    for task in ("msa", "masc"):
        pre = get_prompt("pre", task).render("post", "A")
        assert "neutral:" in pre and all(f'"{f}"' in pre for f in FIELDS)
        exp = get_prompt("exp", task).render("post", "A", "negative")
        assert "negative" in exp.split("Text:")[1]
    assert "Only the sentiment toward the target aspect counts" in get_prompt("pre", "masc").template
    assert "target aspect" not in get_prompt("pre", "msa").template


def test_training_prompts_are_short():
    cot = get_prompt("cot", "msa").render("x")
    assert "definitions" not in cot and all(f'"{f}"' in cot for f in FIELDS)
    label = get_prompt("label", "msa").render("x")
    assert '"Prediction"' in label and "Text_analysis" not in label


def test_errors():
    with pytest.raises(MulcotError, match="aspect"):
        get_prompt("pre", "masc").render("x")
    with pytest.raises(MulcotError, match="gold label"):
        get_prompt("exp", "msa").render("x", label="happy")
    with pytest.raises(MulcotError, match="unknown task"):
        get_prompt("pre", "absa")
