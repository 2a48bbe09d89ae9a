"""A teacher's top-k token distribution, computed once and stored with SFT data, and the
dataset class that gives it to the distillation trainer.

    python data_preprocess/add_teacher_topk.py --input_file train.parquet --output_file OUT.parquet \
        --teacher TEACHER_HF_DIR [--k 8] [--temperature 1.0] [--max_length 2048]

``add_teacher_topk`` tokenizes every row exactly as training will (the SFT dataset class,
the teacher's tokenizer, which the student must share), runs the teacher over it, and
adds per row: ``teacher_topk_ids`` and ``teacher_topk_log_probs`` (k values for every
token position, flattened; log-probs of softmax(logits / temperature)), a checksum of
the token ids they belong to, and the teacher's identity (its folder and a hash of its
weights), k and the temperature. ``DistillSFTDataset`` refuses, naming the row, data
whose tokens are not the ones the teacher saw (another tokenizer, template or
max_length) or whose temperature is not the trainer's.
"""

from __future__ import annotations

import hashlib
import os
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from afm_trainer.data.parquet_io import InputError, cannot_write, remove_quietly
from afm_trainer.data.sft_dataset import AgentSFTDataset

TEACHER_COLUMNS = (
    "teacher_topk_ids",
    "teacher_topk_log_probs",
    "teacher_input_crc",
    "teacher_k",
    "teacher_temperature",
    "teacher",
)


def token_crc(input_ids: torch.Tensor) -> int:
    return zlib.crc32(input_ids.to(torch.int64).numpy().tobytes())


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def dataset_config(max_length: int) -> dict:
    """The SFT dataset settings the project trains with (afm_defaults.yaml)."""
    return {"pad_mode": "no_padding", "truncation": "right", "max_length": max_length, "messages_key": "messages"}


@torch.no_grad()
def add_teacher_topk(
    input_file: str, output_file: str, teacher: str, k: int = 8, temperature: float = 1.0, max_length: int = 2048
) -> dict:
    """Write ``input_file``'s rows with the teacher's top-k columns to ``output_file``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isfile(input_file):
        raise InputError(f"input file not found: {input_file}")
    if not os.path.isfile(os.path.join(teacher, "config.json")):
        raise InputError(f"teacher {teacher} is not a Hugging Face model folder (no config.json)")
    if k < 1 or temperature <= 0:
        raise InputError(f"k must be >= 1 and temperature > 0 (got k={k}, temperature={temperature})")
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    identity = f"{os.path.abspath(teacher)}#{weights_digest(model)}"
    dataset = AgentSFTDataset(input_file, tokenizer, dataset_config(max_length))
    table = pq.read_table(input_file)
    ids_column, logp_column, crcs = [], [], []
    for row in range(len(dataset)):
        input_ids = dataset[row]["input_ids"]
        logits = model(input_ids=input_ids[None]).logits[0].float() / temperature
        top = torch.topk(torch.log_softmax(logits, dim=-1), k, dim=-1)
        ids_column.append(top.indices.flatten().tolist())
        logp_column.append(top.values.flatten().tolist())
        crcs.append(token_crc(input_ids))
    n = len(crcs)
    table = (
        table.append_column("teacher_topk_ids", pa.array(ids_column, pa.list_(pa.int32())))
        .append_column("teacher_topk_log_probs", pa.array(logp_column, pa.list_(pa.float32())))
        .append_column("teacher_input_crc", pa.array(crcs, pa.int64()))
        .append_column("teacher_k", pa.array([k] * n, pa.int32()))
        .append_column("teacher_temperature", pa.array([float(temperature)] * n, pa.float64()))
        .append_column("teacher", pa.array([identity] * n, pa.string()))
    )
    try:  # a failed write (a full disk) leaves no temporary and the earlier file as it was
        pq.write_table(table, output_file + ".tmp")
        os.replace(output_file + ".tmp", output_file)
    except OSError as exc:
        remove_quietly(output_file + ".tmp")
        raise cannot_write(output_file, exc) from None
    return {"rows": n, "k": k, "temperature": temperature, "teacher": identity}


class DistillSFTDataset(AgentSFTDataset):
    """``AgentSFTDataset`` plus each row's teacher top-k, as (tokens, k) tensors.

    Use it with ``data.custom_cls.path=pkg://afm_trainer.data.distill_dataset
    data.custom_cls.name=DistillSFTDataset`` (the distillation recipe's config does);
    ``data.distill_temperature`` must equal the temperature the data was made at."""

    def __init__(self, parquet_files, tokenizer, config, processor=None, max_samples: int = -1):
        self.config_temperature = (config or {}).get("distill_temperature")
        super().__init__(parquet_files, tokenizer, config, processor=processor, max_samples=max_samples)

    def _read_files_and_process(self):
        super()._read_files_and_process()
        missing = [c for c in TEACHER_COLUMNS if c not in self.dataframe.columns]
        if missing:
            raise ValueError(
                f"the data has no {', '.join(missing)}: add the teacher's top-k with data_preprocess/add_teacher_topk.py"
            )
        self.teacher = self.dataframe[list(TEACHER_COLUMNS)].to_dict("records")

    def __getitem__(self, item):
        res = super().__getitem__(item)
        row = self.teacher[item]
        k, n = int(row["teacher_k"]), len(res["input_ids"])
        if int(row["teacher_input_crc"]) != token_crc(res["input_ids"]) or len(row["teacher_topk_ids"]) != n * k:
            raise ValueError(
                f"data row {item}: the teacher's top-k was computed on other tokens than this row's {n} "
                "(another tokenizer, chat template or max_length): recompute it with add_teacher_topk.py"
            )
        expected = self.config_temperature
        if expected is not None and abs(float(row["teacher_temperature"]) - float(expected)) > 1e-9:
            raise ValueError(
                f"data row {item}: the teacher's log-probs are at temperature {row['teacher_temperature']}, "
                f"the trainer's distill.temperature is {expected}"
            )
        res["teacher_topk_ids"] = torch.as_tensor(row["teacher_topk_ids"], dtype=torch.long).view(n, k)
        res["teacher_topk_log_probs"] = torch.as_tensor(row["teacher_topk_log_probs"], dtype=torch.float32).view(n, k)
        return res
