"""One SIP step: candidates per prefix -> judge rewards -> selection -> micro-batches -> loss."""
