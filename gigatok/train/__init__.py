"""Training loops: resumable, checkpointed on disk."""
