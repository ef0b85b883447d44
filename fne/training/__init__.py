"""`fne train`: direct use, from scratch, frozen + new head, fine-tuning."""
