"""tunelab.demo."""
