"""Pairwise-loss kernels: tiled PyTorch and Triton backends."""
