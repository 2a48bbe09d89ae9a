"""Run in TRL's own environment by tests/data/test_pair_formats.py: load a pair parquet
as TRL users do and print, as one JSON line, what TRL's data preparation makes of it.

    python trl_round_trip.py PAIRS.parquet MODEL_DIR WORK_DIR
"""

import json
import sys

import datasets
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

pairs, model_path, work = sys.argv[1:4]
dataset = datasets.load_dataset("parquet", data_files=pairs, split="train")
tokenizer = AutoTokenizer.from_pretrained(model_path)
config = trl.DPOConfig(output_dir=work, report_to="none", use_cpu=True, max_steps=1)
model = AutoModelForCausalLM.from_pretrained(model_path)
prepared = trl.DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer).train_dataset
print(
    json.dumps(
        {
            "tool_calls": dataset[0]["chosen"][0]["tool_calls"],
            "tools": dataset[0]["tools"],
            "conversational": [is_conversational(example) for example in dataset],
            "prompt_kept": [maybe_extract_prompt(example) == example for example in dataset],
            "texts": maybe_apply_chat_template(dataset[1], tokenizer),
            "dpo_prompt": tokenizer.decode(prepared[0]["prompt_ids"]),
            "dpo_chosen": tokenizer.decode(prepared[0]["chosen_ids"]),
            "dpo_rejected_1": tokenizer.decode(prepared[1]["rejected_ids"]),
        }
    )
)
