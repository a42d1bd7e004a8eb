"""varmem: memory-augmented generative few-shot models, Triton kernels, Ray training."""
from setuptools import find_packages, setup

# One import name: the top-level folders are installed as varmem.<folder> (never as bare
# `distributed`, `kernels`, ...: those names belong to Dask and other projects).
SUBPACKAGES = ("episodes", "kernels", "models", "distributed", "benchmarks")
PACKAGES = ["varmem"] + [
    f"varmem.{p}" for top in SUBPACKAGES for p in find_packages(include=[top, f"{top}.*"])
]
PACKAGE_DIR = {"varmem": "varmem", **{f"varmem.{top}": top for top in SUBPACKAGES}}

setup(
    name="varmem",
    version="0.1.0",
    description=(
        "Ray-distributed meta-learning trainer for generative few-shot models "
        "(Variational Memory Addressing and its baselines) with Triton kernels"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    install_requires=[
        # torch 2.11 to 2.13 is what we test; install torch first on CPU-only machines
        # (a bare requirement pulls a multi-GB CUDA build).
        "torch>=2.11,<2.14",
        "triton>=3.6,<3.10; platform_system == 'Linux'",
        # `default` brings the dashboard that `ray job submit` needs.
        "ray[default,train,tune]>=2.50",
        "numpy>=1.24",
        "pyarrow>=14",
        "tensorboard>=2.14",
        # Pillow: PNG decoding of Omniglot/folder images, antialiased resizing, PNG grids.
        "pillow>=10",
        # PyYAML: typed run configs are stored and edited as YAML.
        "pyyaml>=6",
        # matplotlib (Agg backend): NLL tables, training and scaling curves as plots.
        "matplotlib>=3.7",
        # tqdm: progress bars of long commands (data build, eval, search results), quiet off a terminal.
        "tqdm>=4.64",
    ],
    extras_require={
        # moto[server]: a real S3-compatible server (python -m moto.server on 127.0.0.1) for the object-storage
        # tests of datasets and runs on s3:// (tests/s3server.py); boto3 comes with it
        "test": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6.100", "moto[server]>=5.0"],
    },
    entry_points={"console_scripts": ["varmem=varmem.cli:main"]},
)
