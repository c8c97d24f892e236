"""tunelab.engine."""
