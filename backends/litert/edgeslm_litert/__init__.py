"""edgeslm's LiteRT (TFLite) backend: litert-torch exporter, ai_edge_litert engine, micro models."""
