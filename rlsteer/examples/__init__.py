"""Worked examples of tasks beyond math: a dataset and reward functions each (README: Your own task)."""
