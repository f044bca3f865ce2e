"""Build engines and generators from the `judge` / `rewriter` config sections."""

from __future__ import annotations

from megatron_sip.judges.config import EndpointConfig, JudgeConfig, check_reasoning_judge
from megatron_sip.judges.criteria import PromptSet
from megatron_sip.judges.engine import JudgeEngine, ModelEngine
from megatron_sip.judges.generation import TextGenerator


async def open_generator(cfg: EndpointConfig, *, backend: str, section: str) -> TextGenerator:
    """A started TextGenerator: the HTTP client (after health gating) or the in-process model."""
    if backend == "openai":
        from megatron_sip.judges.client import OpenAIClient

        client = OpenAIClient(cfg, section=section)
        try:
            await client.start()
        except BaseException:
            await client.aclose()
            raise
        return client
    if backend == "embedded":
        from megatron_sip.judges.backends.embedded import EmbeddedGenerator

        return await EmbeddedGenerator.open(cfg.local_model, api=cfg.api,
                                            max_batch_size=cfg.max_concurrency_per_endpoint)
    raise ValueError(f"{section}.backend '{backend}' has no text generator")


async def open_engine(cfg: JudgeConfig) -> JudgeEngine:
    if cfg.backend == "rules":
        from megatron_sip.judges.backends.rules import RulesEngine, load_lexicon

        return RulesEngine(load_lexicon(cfg.lexicon, key="judge.lexicon"))
    if cfg.backend == "classifier":
        from megatron_sip.judges.backends.classifier import open_classifier_engine

        return open_classifier_engine(cfg.criteria)
    prompts = PromptSet(cfg.criteria, prompt_dir=cfg.prompt_dir, direct=cfg.decision == "direct")  # checked before any model loads
    generator = await open_generator(cfg, backend=cfg.backend, section="judge")
    try:
        # With judge.model null the served id is known only now: recognise reasoning judges by it.
        check_reasoning_judge(cfg, getattr(generator, "model", None))
    except BaseException:
        await generator.aclose()
        raise
    return ModelEngine(generator, cfg, prompts)
