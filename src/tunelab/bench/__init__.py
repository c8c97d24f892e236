"""tunelab.bench."""
