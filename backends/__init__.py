"""Backend libraries and their plugin modules (installed as ``llama2.backends``)."""
