"""pytest, run from the repository (the README's test command, nbval on notebooks/*.ipynb):
the notebooks run at their ``fast`` size unless ``ZOEDU_SIZE`` says otherwise. nbval injects
no parameters; the kernel it starts inherits this environment, and every notebook's
parameters cell reads ``ZOEDU_SIZE`` (default ``"lesson"``, what a person's Run All gets)."""

import os

os.environ.setdefault("ZOEDU_SIZE", "fast")
