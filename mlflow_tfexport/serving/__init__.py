"""Serving: the pyfunc of every tfexport variant and everything it needs (the only code a model carries).

``pyfunc`` is the MLmodel's ``loader_module``; ``conf`` reads and checks the
flavor block; ``text``/``image`` are the pyfuncs over ``base``; ``runtimes``
holds one runner per format. Requests share no mutable state (several run at
once in the scoring server), every ``params`` value is range-checked before
work, and work stops at the scoring server's request timeout (``deadline``).
Python 3.10, no torch or transformers at module level.
"""
