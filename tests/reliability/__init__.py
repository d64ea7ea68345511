"""The reliability suite: fuzzing, protocol abuse, load, faults and security of llmd."""
