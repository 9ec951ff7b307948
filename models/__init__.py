"""Training, export and evaluation of the box's models (TensorFlow only here, in the train extra)."""
