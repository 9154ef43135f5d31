"""`python -m gridhive.controller serve …`: the controller as its own process (tests run it this way)."""
from .cli import app

app(prog_name="gridhive-ctl")
