"""edgeslm's ONNX backend: torch.onnx (dynamo) exporter and ONNX Runtime engine."""
