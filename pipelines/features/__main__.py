"""``python -m pipelines.features``: see :mod:`pipelines.features.job`."""

import typer

from pipelines.features.job import main

typer.run(main)
