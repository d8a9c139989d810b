"""Builders of the bundled assets (the tiny model, the sample dataset): run once by `make`, never at run time."""
