"""Training: the step math (`train_step`), its jit/sharding wiring (`trainer`), the
loop (`train.train_and_evaluate`), checkpoints (`checkpointing`) and where results go
(`reporting`, `progress`)."""
