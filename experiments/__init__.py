"""The paper notebooks' experiment code: runs, tables, conclusions and figures.

Uses ``ddc`` (the library) and ``analysis`` (statistics and figures). Neither
of those imports this package, except ``ddc``'s command line, lazily.
"""
