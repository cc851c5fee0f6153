"""What fine-tuning would freeze and need: lock plans and training-memory estimates, computed from
a config on the meta device (no weights read)."""
