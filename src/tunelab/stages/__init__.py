"""tunelab.stages."""
