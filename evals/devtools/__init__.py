"""Tools for developing this project, kept out of the installed package.

This folder is deliberately absent from ``[tool.setuptools] packages`` in pyproject.toml, so
the wheel holds none of it (``tests/deploy/test_packaging.py`` checks that). From a checkout
its modules still run, because the editable install maps ``framestream.evals`` onto ``evals/``::

    python -m framestream.evals.devtools.ray_wheel --python-version 3.12 --out .whl-ray

- :mod:`.ray_wheel`: trims Ray's wheel to carry it to a lent accelerator machine with no
  package index (docs/scaling.md).

Nothing in the installed package may import from here.
"""
