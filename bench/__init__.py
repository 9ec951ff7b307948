"""`make bench`: speed and memory measured as ratios against a baseline run in the same process.

Each area has a module here with ``run(*, quick: bool = False) -> str`` returning a markdown section.
The machines are shared and noisy, so every figure that matters is a ratio against a baseline measured
in the same process, next to the absolute number. These are measurements, never timed tests.
"""
