from setuptools import find_packages, setup

setup(
    name="afm-trainer",
    version="0.1.0",
    description="Turn agent trajectories into one Agent Foundation Model: data, SFT, RL and evaluation on verl",
    packages=find_packages(include=["afm_trainer", "afm_trainer.*"]),
    package_data={"afm_trainer": ["recipes/*/config/*.yaml", "recipes/*/config/*/*.yaml", "demo/config/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "verl==0.9.1",
        # verl's GPU extras pin torch 2.11; the CPU wheel used here is 2.13.
        "torch>=2.9,<2.14",
        # verl needs these at run time without declaring them (SFT: uvicorn, fastapi;
        # main_ppo: TransferQueue, pyzmq, msgspec, cachetools).
        "uvicorn",
        "fastapi",
        "TransferQueue>=0.1.10",
        "pyzmq",
        "msgspec",
        "cachetools",
        "hydra-core>=1.3",
        "pandas",
        "pyarrow>=19",
        "transformers>=5.5.3,<5.11",
        "tokenizers",
        "ray>=2.41",
        "peft",
        "matplotlib",
        "tqdm",
        "bm25s",
        # integrated gradients for the self-improvement report's draft attribution
        "captum>=0.8",
        "httpx",
        "orjson",
        "pyyaml",
        # trainer.logger=[console,file,tensorboard]: verl writes through torch.utils.tensorboard
        "tensorboard",
    ],
    extras_require={
        "gpu": ["vllm", "flash-attn"],
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff==0.17.5"],
    },
    entry_points={
        # verl imports every "verl.plugins" entry point in every process (torchrun
        # ranks, Ray workers): this is how the CPU platform registers itself.
        "verl.plugins": ["afm_trainer = afm_trainer.verl_ext"],
    },
)
