"""Packaging glue that pyproject.toml cannot express: ship the top-level Resources/ folder (sample data,
shipped encoders, icons) inside the wheel as ``ContrastiveSegLib.resources``, so the demo works from an
installed package, not only from a checkout."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ContrastiveSegLib", "ContrastiveSegLib.*"]) + ["ContrastiveSegLib.resources"],
    package_dir={"ContrastiveSegLib.resources": "Resources"},
    package_data={"ContrastiveSegLib.resources": ["SampleData/*", "Models/*", "Icons/*"]},
)
