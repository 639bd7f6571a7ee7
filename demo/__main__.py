import typer

from demo.run import main

typer.run(main)
