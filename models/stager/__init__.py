"""The sleep-stage model: training (train.py), evaluation (evaluate.py), Sleep-EDF loading (sleepedf.py)."""
