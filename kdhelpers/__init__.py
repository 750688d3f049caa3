"""kdhelpers: the small, tested helper package behind the knowledge-distillation course."""

__version__ = "0.1.0"
