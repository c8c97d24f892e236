"""Small helpers with no tunelab dependencies (the lowest layer)."""
