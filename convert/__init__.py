"""Export checkpoints to GGUF and quantize them (installed as ``llama2.convert``)."""
