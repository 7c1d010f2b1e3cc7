"""The ``tfexport`` model flavor: save, log and load a Transformers model as an MLflow model (``api``), the one
builder of its MLmodel block (``block``), its signatures, environment and image-model files."""
