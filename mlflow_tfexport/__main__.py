"""``python -m mlflow_tfexport``."""

import sys

from mlflow_tfexport.cli import main

sys.exit(main())
