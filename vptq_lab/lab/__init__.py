"""The workbench, on top of everything else: perplexity, method comparisons, bit budgets, plots and widgets."""
