"""Export a logged source model to another format as a validated registry version.

``api`` (``export``, ``export_to_directory``: the stages), ``options`` (the
options, parsed and checked against the format in one place), ``formats``
(the backend of a format), ``source`` (model URI -> source model), ``wrapper``
(the module that is traced), and one backend per format: ``onnx/`` (backend,
graph optimisation and quantisation, generation with past key values),
``torchscript`` and ``neuron``.
"""
