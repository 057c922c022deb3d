"""The paper's analyses of trained vectors (definitions in docs/semantics.md): each a library function that
returns tidy records, plus ``rlsteer analyze KIND`` writing records and figures to ``analysis/KIND/``."""
