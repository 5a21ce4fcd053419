"""edgeslm's Core ML backend: stateful .mlpackage exporter (coremltools) and MLModel engine (macOS).

The engine half imports only numpy and edgeslm until a bundle is opened on a Mac; the exporter
half needs the ``export`` extra (torch, coremltools). See docs/backends/coreml.md.
"""
