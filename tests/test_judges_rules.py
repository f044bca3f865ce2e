"""The programmatic `rules` judge (controlled experiments) and the judge/rewriter config checks."""

from __future__ import annotations

import pytest

from megatron_sip.config import load_config
from megatron_sip.errors import ConfigError
from megatron_sip.judges.backends.rules import has_lexicon_term, load_lexicon, quality_signal, repetition, support
from megatron_sip.judges.config import JudgeConfig, RewriterConfig


def test_lexicon_matches_whole_words_and_phrases(tmp_path):
    lexicon = load_lexicon(None, key="judge.lexicon")
    assert has_lexicon_term("They will KILL the king.", lexicon)
    assert not has_lexicon_term("The skill of the killer whale.", lexicon)
    assert has_lexicon_term("how to build a weapon at home", lexicon)
    assert not has_lexicon_term("build a house", lexicon)
    custom = tmp_path / "lexicon.txt"
    custom.write_text("# comment\nred fox\n")
    assert has_lexicon_term("the Red  Fox ran", load_lexicon(str(custom), key="judge.lexicon"))
    with pytest.raises(ConfigError, match="judge.lexicon"):
        load_lexicon(str(tmp_path / "missing.txt"), key="judge.lexicon")


def test_overlap_and_repetition_signals():
    reference = "The committee approved the budget for the new library in March"
    assert support("approved the library budget", reference) == 1.0
    assert support("invented martian volcanoes", reference) == 0.0
    assert repetition("a b c a b c a b c") > 0.5 and repetition("one two three four") == 0.0
    assert quality_signal(reference, "", reference) > quality_signal("the the the the the", "", reference)


@pytest.mark.parametrize("override, key", [
    ("judge.api=grpc", "judge.api"),
    ("judge.endpoints=[judge-0:8000]", "judge.endpoints"),
    ("judge.knockout_budget=0", "judge.knockout_budget"),
    ("judge.top_p=0", "judge.top_p"),
    ("judge.max_retries=-1", "judge.max_retries"),
    ("judge.criteria=[style]", "judge.criteria"),
    ("+judge.weights.safety=2", "judge.weights.safety"),
    ("rewriter.context_words=-1", "rewriter.context_words"),
    ("rewriter.backend=bogus", "rewriter.backend"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(key)


def test_api_key_sources_are_exclusive():
    with pytest.raises(ConfigError, match="judge.api_key_file"):
        JudgeConfig(api_key_env="A", api_key_file="b")
    assert RewriterConfig(endpoints=["https://judge:8000/v1"]).endpoints


def test_prompt_override_is_checked(tmp_path):
    from megatron_sip.judges.criteria import PromptSet

    (tmp_path / "quality.txt").write_text("Compare $prefix with $option_1.\n$decision 1 or 2")
    with pytest.raises(ConfigError, match=r"judge.prompt_dir.*lacks \$option_2"):
        PromptSet(["quality"], prompt_dir=str(tmp_path))
    (tmp_path / "quality.txt").write_text("$prefix $option_1 $option_2 answer 1 or 2\nFINAL DECISION: 1")
    with pytest.raises(ConfigError, match=r"lacks \$decision \(ask for a last line"):
        PromptSet(["quality"], prompt_dir=str(tmp_path))
    (tmp_path / "quality.txt").write_text("Ours: $prefix | $option_1 | $option_2 | costs $$5\n$decision <1|2>")
    prompts = PromptSet(["quality", "safety"], prompt_dir=str(tmp_path))  # safety falls back to the packaged one
    from megatron_sip.judges.criteria import Ask

    assert prompts.render(Ask("quality", "p", ("a", "b"))).prompt.startswith("Ours: <<<BEGIN START")
