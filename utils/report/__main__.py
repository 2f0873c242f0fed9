"""``python -m utils.report RUN_DIR ...``: compare finished runs (:mod:`utils.report.compare`)."""

from utils.app.cli import run_main
from utils.report.compare import main

run_main(main)
