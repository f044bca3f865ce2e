"""`megatron-sip serve`: the OpenAI-compatible server over a local model (the sidecar of the
embedded default and of the tests); `generator.py` is shared with the in-process backend."""
