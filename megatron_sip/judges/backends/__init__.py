"""Judge and rewriter backends: `openai` (HTTP servers), `embedded` (a local model in-process)
and `rules` (programmatic, for controlled experiments)."""
