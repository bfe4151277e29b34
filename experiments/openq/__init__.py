"""Experiments of the open-question notebooks (06-09), one module per notebook.

Each module names its notebook in ``NOTEBOOK`` and offers ``figures(run_dir)``,
which rebuilds that notebook's figures from its stored results (used by
``ddc figures``), besides the experiment functions the notebook calls.
"""

MODULES = ("architectures", "learned_mapping", "bayesian", "robustness")
