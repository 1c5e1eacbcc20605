"""`python -m csdistill.compare --evaluate-worker SPEC.json`: one evaluation worker (compare/workers.py)."""

import sys

from csdistill.compare.workers import worker_main

worker_main(sys.argv[1:])
