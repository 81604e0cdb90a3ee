"""Studies: series of models x compressions, run as cells, reported together."""
