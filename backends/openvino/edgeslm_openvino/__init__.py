"""edgeslm's OpenVINO backend: stateful IR exporter (NNCF weight compression) and engine."""
