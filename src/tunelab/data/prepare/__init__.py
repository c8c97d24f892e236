"""tunelab.data.prepare."""
