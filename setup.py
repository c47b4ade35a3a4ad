"""Build script. The Python package needs no compiler; the C++/CUDA extension in csrc/ is optional."""
from setuptools import setup

setup()
