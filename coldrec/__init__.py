"""coldrec: cold-start recommendation with an end-to-end DropoutNet two-tower model."""

__version__ = "0.1.0"
