"""tunelab.kernels."""
