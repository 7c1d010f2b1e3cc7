"""The ``mlflow-tfexport`` command line (``main``): argparse over the public functions, no logic of its own."""
