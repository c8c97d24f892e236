"""tunelab.export."""
