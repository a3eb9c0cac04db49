"""Classify texts with a trained intervention or adapter: python predict.py --help"""

import sys

from reftlab.serving.predict import main

if __name__ == "__main__":
    sys.exit(main())
