"""``python -m mlflow_tfexport``."""

import sys

from mlflow_tfexport.cli.main import main

sys.exit(main())
