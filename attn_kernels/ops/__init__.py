"""Triton kernels (and the C++/CUDA extension wrapper), one module per op family."""
