"""Evaluation (PAPER.md, "Evaluation protocol"): greedy generations of a checkpoint (and a
baseline) on held-out prefixes, judged pairwise for quality and pointwise for safety and
factuality, plus held-out NLL; report.json, report.md and plots. See docs/evaluate.md.

Modules (import them directly):
  config        the `eval` settings (EvalConfig)
  checkpoints   run or checkpoint directory -> ModelSource; loading weights
  heldout       the first M samples of data.eval_paths
  generate, nll greedy continuations and suffix NLL of one model
  policy        both models' side of the evaluation
  judging       every vote from the configured judge, both pair orders kept apart
  metrics       pure metric functions: win rate, safety majority, intervals
  summary, report, markdown, plots   the results and their files
  run           evaluate(cfg, eval_cfg): the whole protocol
"""
