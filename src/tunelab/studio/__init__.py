"""tunelab.studio."""
