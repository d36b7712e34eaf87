"""User-facing jobs behind the ``minipeft`` command: pretrain, fine-tune, merge, quickstart."""
