"""tunelab.eval."""
