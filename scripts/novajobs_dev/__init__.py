"""Development helpers shared by scripts/, the tests and the demo: the local stack of real
servers (``stack``), demo data (``demo_data``), benchmark helpers (``bench``) and the
gc-files crash rounds (``gc_crash``).

Not part of the installed novajobs (only ``novajobs*`` at the repository root is packaged).
It is importable where development happens: a script in scripts/ has its own directory
on ``sys.path``, and pytest adds scripts/ (``pythonpath`` in pyproject.toml).
"""
