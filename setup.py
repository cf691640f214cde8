"""Package layout (metadata is in pyproject.toml).

The kernels live in the top-level ``kernels/`` folder but install as ``megatron_omni.kernels``, so
no top-level ``kernels`` module is ever installed: the public index has an unrelated package of that
name which transformers integrates with.
"""
from setuptools import find_packages, setup

KERNEL_PACKAGES = ["megatron_omni.kernels", *(f"megatron_omni.kernels.{name}" for name in find_packages("kernels"))]

setup(
    packages=[*find_packages(include=["megatron_omni", "megatron_omni.*"]), *KERNEL_PACKAGES],
    package_dir={"megatron_omni.kernels": "kernels"},
)
