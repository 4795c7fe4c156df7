"""Experiment readouts: canaries, A/B tests and shadow versions read out from the decision log and matured labels."""
