"""The paper's analyses of trained vectors (reference-semantics §5–§11): each a library function that
returns tidy records, plus ``rlsteer analyze KIND`` writing records and figures to ``analysis/KIND/``."""
