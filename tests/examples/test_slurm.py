"""examples/slurm/: the sbatch scripts for two nodes.

Fast tests run each script with bash, as inside an allocation (SLURM_* variables and a
stand-in `scontrol`), with DRY_RUN=1: the commands every node would run. The e2e tests
submit them to a real Slurm started here: slurmctld, two slurmd daemons on this host
(``slurmd -N n1``, ``-N n2``: two Slurm nodes, one machine), munge with a key of its
own, all under a temporary folder and on free ports, stopped afterwards. They train
the nano model on CPU: the progressive SFT chain with torchrun across the two nodes,
and GRPO on a Ray cluster the script starts over them.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pandas as pd
import psutil
import pytest

from tests.conftest import REPO
from tests.examples.test_examples import RECIPE_KEYS, rl_summary
from tests.recipes.test_rl_recipe import SMALL

SLURM = os.path.join(REPO, "examples", "slurm")
SFT = os.path.join(SLURM, "sft_chain_2nodes.sbatch")
GRPO = os.path.join(SLURM, "grpo_2nodes.sbatch")
PHASES = ("phase1_multiturn", "phase2_summary_only", "phase3_summary_prefix")
# What the scripts read from the environment besides the recipes' keys.
SCRIPT_KEYS = ("NPROC", "RL_DATA_DIR", "RAY_PORT", "RAY_NUM_CPUS", "RAY_START_ARGS", "RAY_WAIT_S", "AFM_TRAINER_DIR")

# `scontrol` as the scripts use it, for a cluster whose node gpu-N is at 203.0.113.N
# (a documentation address: a dry run connects nowhere).
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
    "show hostnames") tr ',' '\\n' <<<"$3" ;;
    "show node") printf 'NodeName=%s Arch=x86_64\\n   NodeAddr=203.0.113.%s NodeHostName=%s\\n' "$3" "${3##*-}" "$3" ;;
    *) echo "fake scontrol: $*" >&2; exit 1 ;;
esac
"""


def clean_env(**env) -> dict[str, str]:
    """This environment without a developer's recipe settings or a surrounding Slurm job's."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in RECIPE_KEYS + SCRIPT_KEYS and not k.startswith("SLURM_") and k != "HF_HUB_OFFLINE"
    }
    return {**base, "PYTHON": sys.executable, **env}


# --- fast: the scripts under bash, as inside a two-node allocation ---------------------


@pytest.fixture
def allocation(tmp_path):
    """The environment of a job on gpu-1 and gpu-2 with 8 GPUs and 32 CPUs a node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "1234",
        "SLURM_JOB_NODELIST": "gpu-1,gpu-2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_PER_NODE": "h100:8",
        "SLURM_CPUS_PER_TASK": "32",
        "SLURMD_NODENAME": "gpu-1",
        "DRY_RUN": "1",
    }


def run_script(script: str, *args, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", script, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=clean_env(**env), timeout=300
    )


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """DATA_DIR as run_pipeline.sh lays it out: the starter set for each phase."""
    from afm_trainer.data.starter import write_starter_dataset

    root = tmp_path_factory.mktemp("slurm_sft_data")
    train, val = write_starter_dataset(str(root / "starter"), n_train=8, n_val=4)
    for phase in ("multiturn", "summary_only", "summary_prefix"):
        os.makedirs(root / "data" / phase)
        shutil.copy(train, root / "data" / phase / "train.parquet")
        shutil.copy(val, root / "data" / phase / "val.parquet")
    return root / "data"


def test_sft_dry_run_gives_each_node_its_rank_and_node_0_as_master(tmp_path, allocation, nano_model, sft_data):
    out = tmp_path / "sft"
    result = run_script(SFT, out, sft_data, "PHASE1_EPOCHS=1", MODEL=nano_model, **allocation)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    assert "[slurm] job 1234: 2 nodes (gpu-1,gpu-2) x 8 ranks, rendezvous at 203.0.113.1:29734" in stdout
    srun = next(line for line in stdout.splitlines() if line.startswith("[slurm] would run: srun "))
    assert "--nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --label --cpus-per-task=32 " in srun
    nodes = stdout.split("[slurm] node ")[1:]
    assert [n.split(":", 1)[0] for n in nodes] == ["0", "1"]
    for rank, text in enumerate(nodes):
        assert f"NODE_RANK={rank}  (command line)" in text
        rendezvous = f"--nproc_per_node=8 --nnodes=2 --node_rank={rank} --master_addr=203.0.113.1 --master_port=29734"
        assert text.count(rendezvous) == 3  # every phase
        assert text.count("data.train_batch_size=128") == 3  # 64 a node
        assert "trainer.total_epochs=1" in text  # arguments after DATA_DIR win over the script's
    assert not out.exists()


def test_sft_refuses_a_cpu_allocation_without_nproc_and_runs_outside_slurm_nothing(tmp_path, allocation, sft_data):
    cpu_only = {**allocation, "SLURM_GPUS_PER_NODE": "0"}
    result = run_script(SFT, tmp_path / "sft", sft_data, **cpu_only)
    assert result.returncode == 2 and "set NPROC" in result.stderr and "command:" not in result.stdout

    result = run_script(SFT, tmp_path / "sft", sft_data, **{**cpu_only, "NPROC": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2 --nnodes=2 --node_rank=1" in result.stdout

    outside = {k: v for k, v in allocation.items() if not k.startswith("SLURM")}
    result = run_script(SFT, tmp_path / "sft", sft_data, **outside)
    assert result.returncode == 2 and "not inside a Slurm allocation" in result.stderr


def test_sft_script_finds_the_checkout_from_the_submit_folder(tmp_path, allocation, nano_model, sft_data):
    # sbatch runs a copy of the script from its spool folder
    copy = tmp_path / "spool" / "slurm_script"
    copy.parent.mkdir()
    shutil.copy(SFT, copy)
    result = run_script(copy, tmp_path / "sft", sft_data, MODEL=nano_model, SLURM_SUBMIT_DIR=REPO, **allocation)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{REPO}/recipes/train_progressive.sh" in result.stdout

    result = run_script(copy, tmp_path / "sft", sft_data, SLURM_SUBMIT_DIR=str(tmp_path), **allocation)
    assert result.returncode == 2 and "AFM_TRAINER_DIR" in result.stderr


@pytest.fixture(scope="module")
def rl_dir(tmp_path_factory):
    """RL_DATA_DIR: single-turn algorithmic prompts (no search corpus, no sandbox)."""
    out = tmp_path_factory.mktemp("slurm_rl_data")
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "data_preprocess", "make_rl_data.py"),
            "--out",
            str(out),
            "--suite",
            "algorithmic",
            "--difficulties",
            "1",
            "--n_train",
            "8",
            "--n_val",
            "4",
        ],
        check=True,
        capture_output=True,
    )
    assert len(pd.read_parquet(out / "train.parquet")) == 8
    return out


def test_grpo_dry_run_starts_ray_on_every_node_and_joins_it_from_the_head(tmp_path, allocation, nano_model, rl_dir):
    out = tmp_path / "grpo"
    result = run_script(GRPO, out, rl_dir, "ROLLOUT=vllm", MODEL=nano_model, **allocation)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "[slurm] job 1234: 2 nodes (gpu-1,gpu-2) x 8 ranks, Ray head on gpu-1 at 203.0.113.1:6613" in lines
    head, worker = [line for line in lines if line.startswith("[slurm] would run: srun ")]
    assert "--nodes=1 --ntasks=1 --nodelist=gpu-1 --cpus-per-task=32 " in head
    assert "-m ray.scripts.scripts start --head --node-ip-address=203.0.113.1 --port=6613" in head
    assert "--num-cpus=32 --num-gpus=8 " in head and head.endswith("--block &")
    assert "--nodes=1 --ntasks=1 --exclude=gpu-1 --cpus-per-task=32 " in worker
    assert "start --address=203.0.113.1:6613 --num-cpus=32 --num-gpus=8 " in worker
    summary = rl_summary(result.stdout)
    assert summary["ray_kwargs.ray_init"]["address"] == "203.0.113.1:6613"
    assert summary["trainer.nnodes"] == 2 and summary["trainer.n_gpus_per_node"] == 8
    assert summary["actor_rollout_ref.rollout.name"] == "vllm"
    assert summary["data.train_batch_size"] == 256
    assert f"data.train_files={rl_dir / 'train.parquet'}" in result.stdout
    assert not out.exists()

    # CPU-only nodes: logical GPUs, one per rank, and the logical CPUs verl's placement needs
    cpu = run_script(GRPO, out, rl_dir, MODEL=nano_model, **{**allocation, "SLURM_GPUS_PER_NODE": "0", "NPROC": "1"})
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    assert "--num-cpus=32 --num-gpus=1 " in cpu.stdout
    assert rl_summary(cpu.stdout)["actor_rollout_ref.rollout.name"] == "hf"


# --- e2e: a private Slurm with two nodes on this host --------------------------------

DAEMONS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "munged")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: str, ctld_port: int, node_ports: list[int]) -> str:
    """Everything in ``root``; no cgroups, no accounting database, no GPUs."""
    nodes = "\n".join(
        f"NodeName=n{i} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs=2 State=UNKNOWN"
        for i, port in enumerate(node_ports, start=1)
    )
    return f"""\
ClusterName=afmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
SlurmdParameters=config_overrides
{nodes}
PartitionName=debug Nodes=n[1-{len(node_ports)}] Default=YES MaxTime=INFINITE State=UP
"""


class Slurm:
    """A Slurm of its own in a temporary folder: munged, slurmctld and one slurmd per node."""

    def __init__(self, nodes: int = 2):
        self.nodes = nodes
        self.started = time.time()
        # short: munge's and Ray's socket paths must fit in 107 bytes
        self.root = tempfile.mkdtemp(prefix="afm-slurm-", dir="/tmp")
        for folder in ("state", "log", *(f"spool/n{i}" for i in range(1, nodes + 1))):
            os.makedirs(os.path.join(self.root, folder))
        key = os.path.join(self.root, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf = os.path.join(self.root, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(slurm_conf(self.root, free_port(), [free_port() for _ in range(nodes)]))
        outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env = {**outside, "SLURM_CONF": self.conf, "PATH": SBIN_PATH}
        self.daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        munge = [
            "munged",
            "--foreground",
            "--force",  # root, and a socket folder others cannot enter
            f"--key-file={self.root}/munge.key",
            f"--socket={self.root}/munge.socket",
            f"--pid-file={self.root}/munged.pid",
            f"--log-file={self.root}/log/munged.log",
            f"--seed-file={self.root}/munged.seed",
        ]
        self.daemon(munge, "munged")
        self.wait_for(lambda: os.path.exists(f"{self.root}/munge.socket"), "munged's socket")
        self.daemon(["slurmctld", "-D", "-f", self.conf], "slurmctld")
        # one slurmd per node, each told which node it is (Debian's slurmd can run several)
        for i in range(1, self.nodes + 1):
            self.daemon(["slurmd", "-D", "-N", f"n{i}", "-f", self.conf], f"slurmd-n{i}")
        self.wait_for(lambda: self.idle_nodes() == self.nodes, f"{self.nodes} idle nodes")

    def daemon(self, argv: list[str], name: str) -> None:
        # niceness 19, inherited by every job: the trainings share this machine
        log = open(os.path.join(self.root, "log", f"{name}.out"), "w")
        self.daemons.append(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=lambda: os.nice(19),
                start_new_session=True,
            )
        )
        log.close()

    def wait_for(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail(
                    f"private Slurm: no {what} ({'exited: ' + ', '.join(dead) if dead else 'timed out'})\n"
                    + self.logs()
                )
            time.sleep(0.5)

    def logs(self) -> str:
        folder = os.path.join(self.root, "log")
        texts = []
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), errors="replace") as f:
                texts.append(f"== {name}\n{f.read()[-2000:]}")
        return "\n".join(texts)

    def run(self, *argv: str, check=True) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {result.stderr}")
        return result.stdout

    def idle_nodes(self) -> int:
        states = self.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False).split()
        return states[1::2].count("idle")

    def submit(self, options: list[str], script: str, args: list, env: dict[str, str]) -> str:
        """sbatch OPTIONS SCRIPT ARGS from the repository root, as the README says; the job's id."""
        result = subprocess.run(
            ["sbatch", "--parsable", *options, script, *map(str, args)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**env, "SLURM_CONF": self.conf, "PATH": SBIN_PATH},
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        fields = self.run("scontrol", "show", "job", "--oneliner", job_id).split()
        return dict(f.split("=", 1) for f in fields if "=" in f)

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """The job's record once it has ended (no accounting database here: scontrol,
        which keeps an ended job for MinJobAge, 300 s)."""
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                pytest.fail(f"job {job_id} still {job['JobState']} after {timeout:.0f} s")
            time.sleep(2)
        return job

    def stop(self) -> None:
        """Cancel what still runs, stop the daemons, and leave no process behind."""
        if any(p.poll() is None for p in self.daemons):
            self.run("scancel", "--full", "--quiet", "--partition=debug", check=False)
            deadline = time.monotonic() + 60
            while self.run("squeue", "--noheader", check=False).strip() and time.monotonic() < deadline:
                time.sleep(1)
        for process in reversed(self.daemons):  # the slurmd's first, munged last
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Job step daemons detach from slurmd: any started since this cluster came up is its.
        for process in psutil.process_iter(["name", "create_time"]):
            if (process.info["name"] or "").startswith("slurmstepd") and process.info["create_time"] >= self.started:
                process.send_signal(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    missing = [name for name in DAEMONS if not shutil.which(name, path=SBIN_PATH)]
    if missing:
        pytest.skip(
            f"Slurm and munge are not installed ({', '.join(missing)} missing): "
            "apt-get install slurmctld slurmd slurm-client munge"
        )
    cluster = Slurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def job_output(path) -> str:
    return path.read_text() if path.exists() else "(no output file)"


@pytest.mark.e2e
def test_sft_chain_on_two_slurm_nodes(slurm, tmp_path, nano_model, sft_data):
    out = tmp_path / "sft"
    log = tmp_path / "job-%j.out"
    env = clean_env(NPROC="1", MODEL=nano_model, MASTER_PORT=str(free_port()), HF_HUB_OFFLINE="1")
    job_id = slurm.submit(
        ["--gpus-per-node=0", "--cpus-per-task=1", f"--output={log}"],
        SFT,
        # OUT_DIR, DATA_DIR, then the recipe's arguments: a few steps a phase
        [out, sft_data, "PHASE1_EPOCHS=1", "PHASE2_EPOCHS=1", "PHASE3_EPOCHS=1", "trainer.total_training_steps=2"]
        + ["data.train_batch_size=4", "data.num_workers=0", "data.max_token_len_per_gpu=2048"],
        env,
    )
    job = slurm.wait(job_id, timeout=240)
    output = job_output(tmp_path / f"job-{job_id}.out")
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", output[-4000:]
    assert job["NodeList"] == "n[1-2]"
    assert "2 nodes (n[1-2]) x 1 ranks, rendezvous at 127.0.0.1:" in output
    # srun --label: each node's lines start with its task number
    assert "0:   NODE_RANK=0  (command line)" in output and "1:   NODE_RANK=1  (command line)" in output
    assert output.count("--nnodes=2 --node_rank=1 --master_addr=127.0.0.1") == 3
    assert "1: [phase 3] waiting for node 0 to finish the stage's export" in output
    for phase in PHASES:
        assert (out / phase / "PHASE_COMPLETE").exists(), phase
        step = out / phase / "global_step_2"
        # one model shard per node: torchrun's ranks 0 and 1 came from the two Slurm nodes
        assert (step / "model_world_size_2_rank_1.pt").exists() and (step / "huggingface" / "config.json").exists()
    # both nodes ran on this one host: each held its own lock on the shared OUT_DIR
    assert sorted(p.name for p in out.glob(".afm-trainer-node*.lock")) == [
        ".afm-trainer-node0.lock",
        ".afm-trainer-node1.lock",
    ]


def ray_processes(temp_dir: str, grace_s: float = 0) -> list[psutil.Process]:
    """Ray's processes whose files are in temp_dir (their command lines name it), once
    those that are exiting have had grace_s seconds to go."""
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for process in psutil.process_iter(["cmdline", "status"]):
            if process.info["status"] != psutil.STATUS_ZOMBIE and any(
                temp_dir in arg for arg in process.info["cmdline"] or ()
            ):
                found.append(process)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.mark.e2e
def test_grpo_on_a_ray_cluster_over_two_slurm_nodes(slurm, tmp_path, nano_model, rl_dir):
    out = tmp_path / "grpo"
    log = tmp_path / "job-%j.out"
    ray_tmp = tempfile.mkdtemp(prefix="afm-ray-", dir="/tmp")  # short: Ray's socket paths
    env = clean_env(
        NPROC="1",
        MODEL=nano_model,
        STEPS="2",
        RAY_PORT=str(free_port()),
        RAY_TMPDIR=ray_tmp,
        RAY_START_ARGS="--object-store-memory=200000000",
        HF_HUB_OFFLINE="1",
    )
    micro_batches = [
        f"actor_rollout_ref.{key}_micro_batch_size_per_gpu=2"
        for key in ("actor.ppo", "rollout.log_prob", "ref.log_prob")
    ]
    try:
        job_id = slurm.submit(
            ["--gpus-per-node=0", "--cpus-per-task=1", f"--output={log}"],
            GRPO,
            [out, rl_dir, *SMALL, "trainer.save_freq=2", *micro_batches],
            env,
        )
        job = slurm.wait(job_id, timeout=300)
        output = job_output(tmp_path / f"job-{job_id}.out")
        leftovers = [" ".join(p.info["cmdline"][:3]) for p in ray_processes(ray_tmp, grace_s=15)]
    finally:
        for process in ray_processes(ray_tmp):
            process.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", output[-4000:]
    assert "2 nodes (n[1-2]) x 1 ranks, Ray head on n1 at 127.0.0.1:" in output
    assert "[slurm] waiting for 2 Ray nodes" in output and "[slurm] stopping Ray" in output
    assert "RAY_ADDRESS=127.0.0.1:" in output and "NNODES=2  (command line)" in output
    assert (out / "RL_COMPLETE").exists() and (out / "report.md").exists(), sorted(os.listdir(out))
    # two ranks, one logical GPU on each Ray node: verl spread its actor over both nodes
    assert (out / "global_step_2" / "actor" / "model_world_size_2_rank_1.pt").exists()
    assert not leftovers, leftovers  # Ray stopped with the job
