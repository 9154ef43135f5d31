"""`python -m gridhive.gateway ...`: the same commands as `gridhive gateway ...`."""
from .cli import app

app(prog_name="gridhive gateway")
