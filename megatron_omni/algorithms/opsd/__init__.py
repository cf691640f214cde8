"""OmniOPSD: rationale-privileged on-policy self-distillation (see trainer.py)."""
