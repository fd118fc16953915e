"""goodbooks-10k: the input tables (prepare), the end-to-end chain and its report (run)."""
