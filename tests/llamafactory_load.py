"""Load a mulcot ShareGPT export with LLaMA-Factory's own data pipeline (run by the Python of a separate venv that
has LLaMA-Factory; see tests/test_llamafactory.py and `make llamafactory`). No mulcot import here.

    python tests/llamafactory_load.py DATASET_DIR DATASET_NAME TOKENIZER_JSON

Runs ``llamafactory.data.get_dataset`` (dataset_info.json parsing, ShareGPT alignment, image path resolution, the
Qwen2-VL template and multimodal plugin, SFT tokenisation) and prints one JSON line ``RESULT {...}`` at the end.
"""

import json
import sys
from pathlib import Path

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments, ModelArguments
from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Seq2SeqTrainingArguments

dataset_dir, name, tokenizer_json = sys.argv[1:4]
tok = Qwen2TokenizerFast(tokenizer_file=tokenizer_json, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
data_args = DataArguments(dataset=name, dataset_dir=dataset_dir, template="qwen2_vl", cutoff_len=4096,
                          overwrite_cache=True)
model_args = ModelArguments(model_name_or_path=str(Path(tokenizer_json).parent))
training_args = Seq2SeqTrainingArguments(output_dir=str(Path(dataset_dir) / "lf-out"), do_train=True, report_to=[])
template = get_template_and_fix_tokenizer(tok, data_args)


class Processor:
    """What LLaMA-Factory's Qwen2-VL plugin reads from a processor: a real Qwen2-VL image processor, small images."""

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    tokenizer = tok


train = get_dataset(template, model_args, data_args, training_args, stage="sft", tokenizer=tok,
                    processor=Processor())["train_dataset"]
pad = tok.convert_tokens_to_ids("<|image_pad|>")
images = [img for row in train["images"] for img in (row or [])]
print("RESULT " + json.dumps({
    "rows": len(train),
    "images": len(images),
    "images_exist": all(Path(p).is_file() for p in images),
    "image_pad_per_row": sorted({row.count(pad) for row in train["input_ids"]}),
    "target_tokens_per_row_min": min(sum(t != -100 for t in row) for row in train["labels"]),
}))
