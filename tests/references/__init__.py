"""Independent PyTorch references written from the papers' and mm*'s descriptions, and pinned figures."""
