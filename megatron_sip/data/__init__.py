"""Data: JSONL -> Megatron-Core indexed datasets, the (prefix, suffix) sampler, the rewrite store.

Modules (import them directly; this package imports nothing heavy, because the config schema
imports `data.config` and `megatron-sip config` must not load torch):
  config         the `data` config section
  blend          Megatron's blend convention for data.paths
  codec          tokenizer + end-of-document token
  jsonl, preprocess            JSONL -> .bin/.idx (megatron-sip preprocess)
  indexed, documents           checked reading and crash-safe writing of indexed datasets
  splits, dataset, build       the sample schedule, SIPDataset, build_sip_dataset
  batching, collate            DP micro-batches from consumed_samples, tensors for the loss
  rewrite_store, rewrite_writer, rewrite_job   the rewrite store and megatron-sip rewrite
  preview        megatron-sip sample
See docs/data.md.
"""
