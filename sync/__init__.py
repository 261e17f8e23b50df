"""What crosses between edge and hub: topic layout, message codec, signed model updates.

Pure code, no I/O of its own: both the edge agent and the cloud hub import it, and it
imports neither.
"""
