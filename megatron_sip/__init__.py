"""megatron_sip: Self-Improving Pretraining (SIP) on Megatron-Core."""

__version__ = "0.1.0"
