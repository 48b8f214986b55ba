"""The run: the evaluation engine and the machinery around it (records, ranks, progress, the output folder)."""
