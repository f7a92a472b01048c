"""Training: the shared loop, losses, optimiser, schedule, mixup and the three engine definitions."""
