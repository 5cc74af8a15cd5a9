import json

import pytest

from mulcot.core.reasoning import FIELDS, Reasoning, format_prediction, parse_reasoning

FULL = {
    "Text_analysis": 'The text says "great game" about the team.',
    "Image_analysis": "A crowd cheering.",
    "Conflict_resolution": "No conflict.",
    "Final_conclusion": "Positive overall.",
    "Prediction": "positive",
}


def test_canonical_round_trip():
    r = Reasoning.from_fields(FULL)
    text = r.to_text()
    assert text.split("\n\n")[0] == '"Text_analysis": "The text says \\"great game\\" about the team."'
    assert [line.split('"')[1] for line in text.split("\n\n")] == list(FIELDS)
    parsed = parse_reasoning(text)
    assert parsed.status == "full" and parsed.valid
    assert parsed.reasoning() == r
    assert parsed.form == "text"


@pytest.mark.parametrize(
    "raw, form",
    [
        (json.dumps(FULL), "json"),
        ("```json\n" + json.dumps(FULL, indent=2) + "\n```", "json_fence"),
        ("## Analysis\n\n" + "\n\n".join(f"### {k}\n{v}" for k, v in FULL.items()), "headings"),
        ("\n".join(f"**{k}**: {v}" for k, v in FULL.items()), "text"),
        ("\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in FULL.items()), "text"),
    ],
)
def test_variants_parse_fully(raw, form):
    parsed = parse_reasoning(raw)
    assert parsed.status == "full", parsed.missing
    assert parsed.form == form
    assert parsed.prediction == "positive"
    assert parsed.fields["Image_analysis"] == "A crowd cheering."


def test_unquoted_prediction_and_trailing_commentary():
    base = Reasoning.from_fields(FULL).to_text().rsplit("\n\n", 1)[0]
    assert parse_reasoning(base + '\n\n"Prediction": Negative').prediction == "negative"
    p = parse_reasoning(base + '\n\n"Prediction": "neutral" \n\nThe final prediction is neutral because both.')
    assert p.prediction == "neutral" and p.fields["Prediction"] == "neutral" and p.valid


def test_missing_prediction_falls_back_to_last_label_word():
    base = Reasoning.from_fields(FULL).to_text().rsplit("\n\n", 1)[0]
    p = parse_reasoning(base.replace("Positive overall.", "It is negative, not positive, so negative."))
    assert p.prediction == "negative"
    assert p.prediction_source == "last_label_word"
    assert p.status == "partial" and "Prediction" in p.missing and not p.valid


def test_prediction_keyword_without_field():
    p = parse_reasoning("My prediction would be: Positive. Otherwise negative.")
    assert p.prediction == "positive" and p.prediction_source == "after_keyword" and p.status == "partial"


@pytest.mark.parametrize("raw", ["", "   ", None, "hello world", "[1, 2]", "{not json"])
def test_nothing_found(raw):
    p = parse_reasoning(raw)
    assert p.status == "none" and p.prediction is None and not p.valid


def test_invalid_label_is_not_valid():
    raw = Reasoning.from_fields({**FULL, "Prediction": "mixed"}).to_text()
    p = parse_reasoning(raw)
    assert p.prediction is None and not p.valid and p.status == "partial"


def test_inline_quoted_keys_on_one_line():
    p = parse_reasoning('"Text_analysis": "The text praises the team." "Prediction": positive')
    assert p.fields["Text_analysis"] == "The text praises the team."
    assert p.prediction == "positive" and p.prediction_source == "field"


def test_format_prediction():
    assert format_prediction("neutral") == '"Prediction": "neutral"'
    assert parse_reasoning(format_prediction("neutral")).prediction == "neutral"


def test_authors_chains(shared_data):
    """The 1,037 chains of the authors' release: every one parses fully (figures in the issue note)."""
    items = json.loads((shared_data / "mulcot-rd/t15-test.json").read_text())
    statuses = [parse_reasoning(x["cot"]).status for x in items]
    assert len(statuses) == 1037
    assert statuses.count("full") == 1037
    agree = sum(parse_reasoning(x["cot"]).prediction == x["label"] for x in items)
    assert agree == 1016
