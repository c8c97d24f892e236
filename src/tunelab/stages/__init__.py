"""The recipes, one module (or package, for a stage with modes) per stage, named in api.STAGES.

A recipe imports no other recipe; what several share lives in tunelab.training.
"""
