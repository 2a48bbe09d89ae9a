import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

from afm_trainer.verl_ext.cpu_platform import PlatformCPU, _dedupe_backend, runs_here
from tests.conftest import fresh_python


def test_plugin_is_declared_as_a_verl_entry_point():
    names = {ep.value for ep in entry_points(group="verl.plugins")}
    assert "afm_trainer.verl_ext" in names


def test_fresh_process_selects_cpu_platform_without_any_setting():
    result = fresh_python(
        "import verl; from verl.utils.device import get_device_name, get_nccl_backend;"
        "print(get_device_name(), get_nccl_backend())"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cpu", "gloo"]


def test_cpu_platform_steps_aside_when_an_accelerator_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert PlatformCPU().is_platform_available(use_smi_check=True) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PlatformCPU().is_platform_available(use_smi_check=True) is True


def test_cpu_engines_are_loaded_only_where_the_cpu_platform_runs(monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runs_here() is False  # a GPU machine keeps verl's engines and their import untouched
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    assert runs_here() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("VERL_PLATFORM", "nvidia")
    assert runs_here() is False
    monkeypatch.delenv("VERL_PLATFORM")
    assert runs_here() is True


@pytest.mark.parametrize(
    "given, expected",
    [
        ("cpu:gloo,cpu:gloo", "cpu:gloo"),
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),
        ("gloo", "gloo"),
        (None, None),
    ],
)
def test_backend_string_dedupe(given, expected):
    assert _dedupe_backend(given) == expected


def test_verl_process_group_initialises_on_cpu():
    """verl's own initialize_global_process_group, as its SFT trainer calls it."""
    code = (
        "import torch.distributed as dist;"
        "from verl.utils.device import get_device_name;"
        "get_device_name();"  # selects the platform, as verl's trainers do first
        "from verl.utils.distributed import initialize_global_process_group;"
        "print(initialize_global_process_group(timeout_second=30));"
        "print(dist.get_backend())"
    )
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631"}
    result = fresh_python(code, **env)
    assert result.returncode == 0, result.stderr
    assert "(0, 0, 1)" in result.stdout and "gloo" in result.stdout


def test_device_module_answers_what_verl_asks():
    device = PlatformCPU().device_module
    for name in (
        "empty_cache",
        "synchronize",
        "is_available",
        "current_stream",
        "set_device",
        "device_count",
        "ipc_collect",
        "set_per_process_memory_fraction",
        "Stream",
        "stream",
        "Event",
    ):
        assert hasattr(device, name), name
    assert device.memory_allocated() > 10 * 2**20  # this process's resident memory
    assert device.max_memory_reserved() >= device.memory_reserved() * 0.5
    free, total = device.mem_get_info()
    assert 0 < free <= total
    state = device.get_rng_state()
    first = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(first, torch.rand(3))


def test_pinning_memory_works_without_an_accelerator():
    # verl's RL reference model asks FSDP2 for pinned CPU offload; without a device to
    # pin for, pinning must be a no-op rather than an error.
    code = (
        "import torch, verl; from verl.utils.device import get_device_name; "
        "t = torch.ones(3); print(get_device_name(), t.pin_memory() is t)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["cpu", "True"]


def test_token_logprobs_match_verl_and_are_patched_in_on_cpu(monkeypatch):
    from verl.utils.torch_functional import logprobs_from_logits_naive

    import afm_trainer.verl_ext.cpu_platform as cpu_platform

    monkeypatch.setattr(cpu_platform, "LOGPROB_CHUNK_ELEMENTS", 7 * 50)  # 7 rows per chunk: chunk edges are hit
    torch.manual_seed(0)
    for shape in [(23, 50), (3, 9, 50)]:  # packed tokens, and padded (batch, seq)
        logits = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        labels = torch.randint(0, 50, shape[:-1])
        chunked = cpu_platform.chunked_token_logprobs(logits, labels)
        expected = logprobs_from_logits_naive(logits, labels)
        assert chunked.shape == expected.shape
        torch.testing.assert_close(chunked, expected)
        weights = torch.randn(shape[:-1], dtype=torch.float64)  # a loss weighs tokens differently
        (grad,) = torch.autograd.grad((chunked * weights).sum(), logits)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
        torch.testing.assert_close(grad, expected_grad)

    # verl's trainers reach it through logprobs_from_logits once the platform is selected.
    code = (
        "import verl; from verl.utils.device import get_device_name; get_device_name(); "
        "import verl.utils.torch_functional as f; print(f.logprobs_from_logits_v2._afm_chunked)"
    )
    result = fresh_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "True"
