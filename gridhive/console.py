"""Printing for the CLIs. Text from outside — file names, config values, node and gateway messages,
exceptions that quote them — may hold [brackets], which Rich reads as markup ("[/]" raises, "[a-z]"
vanishes). Such text is printed by `fail()` or `plain()`, or goes through `escape()` before it
joins a markup string."""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

__all__ = ["escape", "fail", "plain"]


def plain(text: str, style: str = "") -> Text:
    """text as Rich shows it verbatim (a table cell, a line), in style."""
    return Text(text, style=style)


def fail(console: Console, message: str, code: int = 2) -> NoReturn:
    """Say what is wrong, in red and verbatim, and exit with code (2: the user's input is wrong).
    Not wrapped to the terminal: a path or a value in it stays whole, to copy."""
    console.print(plain(message, "red"), soft_wrap=True)
    raise typer.Exit(code)
