"""``python -m pipelines.etl``: see :mod:`pipelines.etl.job`."""

import typer

from pipelines.etl.job import main

typer.run(main)
