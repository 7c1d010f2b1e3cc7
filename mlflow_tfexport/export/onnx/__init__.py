"""The ONNX backend: ``backend`` (``torch.onnx.export``), ``optimize`` (onnxruntime fusion and int8
quantisation) and ``generation`` (causal LMs and encoder-decoders with past key values)."""
