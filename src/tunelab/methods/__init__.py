"""tunelab.methods."""
