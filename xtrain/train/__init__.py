"""Training: the plain loop (no Ray) and the Ray Train edge that runs it on N workers."""
