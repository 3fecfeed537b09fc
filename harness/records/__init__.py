"""One typed record of a run, and the words for it, shared by every side.

Imported by the training process (``probe/``), the harness process (``control/``) and everything
that reads a finished run (``analysis/``, ``report/``, ``gate/``); it imports none of them.
"""
