"""tunelab.infer."""
