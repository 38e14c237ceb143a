"""Experiments: the runs that notebooks and the CLI share. Each returns data (DataFrames), never figures."""
