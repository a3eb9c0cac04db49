"""Compare the runs of an MLflow experiment (tables and plots): python report.py --help"""

import sys

from reftlab.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
