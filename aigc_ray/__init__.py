"""aigc-ray: from one YAML experiment spec to a served generative-model ensemble, on Ray."""

__version__ = "0.1.0"
