"""Measuring the conductor: eval suites run through the RunManager, and the graders that score answers."""
