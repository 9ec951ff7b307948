"""The nightmare-loop classifier: simulation, training and export (TensorFlow only in train.py)."""
